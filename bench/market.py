"""Model market benchmark: specifications, search, data-free and few-label reuse (issue 16).

Run with ``make bench-market`` (or ``python bench/market.py --help``). Reads ``../shared/datasets``
at run time (never copies it) and skips with a message when it is absent. Everything is written
under ``--work`` (default a folder in the system temp dir); results go to
``.crowdforge/bench/market.json`` after every part and to the "## Model market" section of
BENCHMARKS.md.

The market: one model per domain, each trained by crowdforge's own pipeline (ingest .. register,
one ``partial-3`` member to keep the build affordable) on a crowd simulated by
``crowdforge.simulate.crowd`` (3 labels per item, the SST-2 benchmark's worker mix: 20 % spammers,
10 % adversaries, 5 % gold checks) over ``--n-train`` texts of that domain, and registered into one
MLflow registry with its specification:

- SST-2 (movie reviews), weather tweets (5 classes), MD-Agreement tweets (offensive or not);
- the demo simulator's topics, one model each: food, travel, phones, movies, service, books.

User tasks: for every domain an unlabelled held-out slice (``--n-user`` texts never seen by any
model), plus out-of-domain tasks no model covers: the simulator's ``games`` topic, and product
records from Abt-Buy (a single text each). Parts (each appends to the results file):

- ``build``  train and register the market;
- ``search`` top-1 retrieval, MMD of right vs wrong matches, verdicts (no classes given: the
  statistical specification alone);
- ``reuse``  data-free reuse on each in-domain task (the user names the task's classes): top-1
  model, job selector and averaging over the models ``market reuse`` chooses (:func:`choose`: the
  3 closest with the task's classes), against the best single model in the market for that task and
  the average over all models that predict its classes;
- ``labels`` 50 / 100 / 200 labelled texts of the task: (a) reuse with feature augmentation (the
  default with labels) and (a') with ensemble pruning over the same models, (b) the best match's
  encoder with a new logistic-regression head, (c) the base backbone (the packaged MiniLM, the
  market's feature space) with the same head; three label draws each. Every head is the same
  cross-validated logistic regression (:func:`crowdforge.market.reuse.fit_augmented`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from statistics import mean
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from learning import WEATHER_CLASSES, bench_params, log, read_sst, run_agents

RESULTS = ROOT / ".crowdforge" / "bench" / "market.json"
TOPIC_MODELS = ("food", "travel", "phones", "movies", "service", "books")
OOD_TOPIC = "games"
STAGES = ["ingest", "validate", "reputation", "augment", "pretrain", "finetune", "ensemble", "register"]
SHOTS = (50, 100, 200)
LABEL_DRAWS = 3
LEARNERS = ("reuse_augment", "reuse_prune", "finetune_best_match", "base_backbone")


# --- the domains' labelled texts ----------------------------------------------------------------
def domain_frames(seed: int) -> dict[str, tuple[Any, Any, list[str], str]]:
    """domain -> (training pool, held-out pool, classes, description); each pool has text and label."""
    import pandas as pd

    from crowdforge.simulate.text import generate_texts

    out: dict[str, tuple[Any, Any, list[str], str]] = {}
    sst_train = read_sst(SHARED / "sst2" / "stsa.binary.train").drop_duplicates("text")
    sst_test = read_sst(SHARED / "sst2" / "stsa.binary.test").drop_duplicates("text")
    out["sst2"] = (sst_train, sst_test[~sst_test["text"].isin(sst_train["text"])], ["negative", "positive"],
                   "movie review sentences")
    w = pd.read_csv(SHARED / "weather_sentiment" / "weather-non-agg-DFE.csv")
    w = w.assign(label=w["emotion"].map(WEATHER_CLASSES), text=w["tweet_body"].astype(str))
    w = (w.groupby("tweet_id").agg(text=("text", "first"), label=("label", lambda s: s.value_counts().idxmax()))
         .reset_index(drop=True).drop_duplicates("text").sample(frac=1.0, random_state=seed))
    half = len(w) // 2
    out["weather"] = (w.iloc[:half], w.iloc[half:], list(WEATHER_CLASSES.values()), "tweets about the weather")
    md_classes = {"0": "not_offensive", "1": "offensive"}

    def md(split: str) -> Any:
        d = json.loads((SHARED / "md_agreement" / f"MD-Agreement_{split}.json").read_text())
        return pd.DataFrame({"text": [v["text"] for v in d.values()],
                             "label": [md_classes[v["hard_label"]] for v in d.values()]}).drop_duplicates("text")

    out["md_agreement"] = (md("train"), md("test"), list(md_classes.values()), "tweets, offensive or not")
    for i, topic in enumerate(TOPIC_MODELS):
        texts = generate_texts(3000, seed=seed + 100 + i, topics=[topic])
        out[topic] = (texts.iloc[:2000], texts.iloc[2000:], ["negative", "neutral", "positive"],
                      f"demo reviews about {topic}")
    return out


def ood_tasks(seed: int, n: int) -> dict[str, list[str]]:
    import pandas as pd

    from crowdforge.simulate.text import generate_texts

    games = generate_texts(n, seed=seed + 999, topics=[OOD_TOPIC])["text"].tolist()
    products = pd.read_csv(SHARED / "entity_matching" / "abt_buy" / "tableA.csv")["name"].dropna().astype(str)
    return {"games (demo topic)": games, "product records (Abt-Buy)": products.sample(n, random_state=seed).tolist()}


# --- build ----------------------------------------------------------------------------------------
def prepare_raw(raw: Path, work: Path, train: Any, test: Any, seed: int) -> dict[str, Any]:
    """A simulated crowd over ``train`` (SST-2's worker mix) and ``test`` as the frozen gold test split."""
    import pandas as pd

    from crowdforge.simulate.crowd import frame_to_csv, simulate_crowd_from_file

    work.mkdir(parents=True, exist_ok=True)
    gold_file = work / "train_gold.csv"
    gold_file.write_bytes(frame_to_csv(train[["text", "label"]]))
    summary = simulate_crowd_from_file(
        gold_file, raw, n_contributors=60, seed=seed, labels_per_item=3, spammer_share=0.2,
        adversary_share=0.1, gold_check_fraction=0.05, gold_test_fraction=0.0, truth_dir=work / "truth")
    gold = pd.read_csv(raw / "gold.csv", dtype=str, keep_default_na=False)
    test_rows = pd.DataFrame({"item_id": [f"t{i:06d}" for i in range(len(test))], "text": test["text"].tolist(),
                              "label": test["label"].tolist(), "split": "test"})
    (raw / "gold.csv").write_bytes(frame_to_csv(pd.concat([gold, test_rows], ignore_index=True)))
    return {"n_items": summary["n_items"], "n_labels": summary["n_labels"], "n_test": len(test_rows)}


def split_domain(train: Any, held: Any, n_train: int, n_test: int, n_user: int, seed: int) -> dict[str, Any]:
    """Disjoint slices: crowd texts, the pipeline's gold test, the user's unlabelled texts, a label pool."""
    train = train.sample(frac=1.0, random_state=seed).iloc[:n_train]
    held = held[~held["text"].isin(train["text"])].sample(frac=1.0, random_state=seed)
    n_test = min(n_test, len(held) - n_user - max(SHOTS))  # a small set (weather) keeps its label pool
    if n_test < 50:
        raise SystemExit(f"only {len(held)} held-out texts: too few for a test split, a user task and labels")
    return {"train": train, "test": held.iloc[:n_test], "user": held.iloc[n_test:n_test + n_user],
            "pool": held.iloc[n_test + n_user:n_test + n_user + max(SHOTS)]}


def build(args: argparse.Namespace, res: dict[str, Any]) -> None:
    tracking = f"sqlite:///{args.work / 'market.db'}"
    frames = domain_frames(args.seed)
    built = res.setdefault("build", {})
    for domain, (train, held, classes, description) in frames.items():
        if domain in built or (args.domains and domain not in args.domains.split(",")):
            continue
        s = split_domain(train, held, args.n_train, args.n_test, args.n_user, args.seed)
        root = args.work / "projects" / domain
        info = prepare_raw(root / "data" / "raw", args.work / "prep" / domain, s["train"], s["test"], args.seed)
        params = bench_params(classes, args.threads, {
            "register.tracking_uri": tracking, "register.model_name": domain, "market.domain": description,
            "finetune.members": [{"name": "partial-3", "strategy": "partial", "seed": 3, "unfreeze_layers": 3,
                                  "max_epochs": 2}]})
        log(f"build {domain}: {info['n_items']} crowd items, {info['n_test']} test")
        t0 = time.perf_counter()
        out = run_agents(params, root, STAGES)
        (args.work / "tasks").mkdir(parents=True, exist_ok=True)
        for part in ("user", "pool"):
            s[part][["text", "label"]].to_csv(args.work / "tasks" / f"{domain}-{part}.csv", index=False)
        built[domain] = {"classes": classes, **info, "seconds": round(time.perf_counter() - t0, 1),
                         "register_seconds": out["register"]["seconds"],
                         "test_accuracy": out["ensemble"]["report"]["test_accuracy"]}
        save(res)


# --- search and reuse -------------------------------------------------------------------------------
def market(args: argparse.Namespace) -> tuple[Any, Any, list[Any]]:
    from crowdforge.config import parse_params
    from crowdforge.market.search import market_entries
    from crowdforge.paths import Paths

    params = parse_params({"register": {"tracking_uri": f"sqlite:///{args.work / 'market.db'}"}})
    paths = Paths(args.work)
    entries, missing = market_entries(params, paths)
    if missing:
        log(f"without specification: {missing}")
    return params, paths, entries


def task_frame(args: argparse.Namespace, domain: str, part: str) -> Any:
    import pandas as pd

    return pd.read_csv(args.work / "tasks" / f"{domain}-{part}.csv", keep_default_na=False)


def search_part(args: argparse.Namespace, res: dict[str, Any]) -> None:
    from crowdforge.market.search import search, user_task

    _, _, entries = market(args)
    rows: dict[str, Any] = {}
    tasks = {d: task_frame(args, d, "user")["text"].tolist() for d in res["build"]}
    tasks.update(ood_tasks(args.seed, args.n_user))
    for name, texts in tasks.items():
        t0 = time.perf_counter()
        matches, _ = search(user_task(texts), entries)
        seconds = time.perf_counter() - t0
        in_domain = name in res["build"]
        rows[name] = {"in_domain": in_domain, "top1": matches[0].entry.model, "seconds": round(seconds, 2),
                      "right": matches[0].entry.model == name if in_domain else None,
                      "suitable": matches[0].suitable, "verdict": matches[0].verdict,
                      "ranking": [(m.entry.model, round(m.mmd2, 5), round(m.ratio, 2)) for m in matches]}
        log(f"search {name}: top-1 {matches[0].entry.model} ({matches[0].verdict}, {matches[0].ratio:.1f}x band)")
    res["search"] = rows
    # search time over 100 registered models: the same specifications ranked repeatedly (after the first import)
    user = user_task(tasks["sst2"])
    big = (entries * (100 // len(entries) + 1))[:100]
    t0 = time.perf_counter()
    search(user, big)
    res["search_100_models_seconds"] = round(time.perf_counter() - t0, 2)
    save(res)


def accuracy(p: Any, y: Any) -> float:
    return float((p.argmax(1) == y).mean())


def reuse_part(args: argparse.Namespace, res: dict[str, Any]) -> None:
    import numpy as np

    from crowdforge.market import reuse as R
    from crowdforge.market.search import search, user_task

    _, paths, entries = market(args)
    cache = paths.cache / "market"
    out: dict[str, Any] = {}
    for domain, b in res["build"].items():
        df = task_frame(args, domain, "user")
        classes = b["classes"]
        y = df["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
        user = user_task(df["text"].tolist(), classes)
        matches = search(user, entries)[0]
        compatible = [m.entry for m in matches]  # every model predicting the task's classes, closest first
        probs = R.model_probs([R.ensemble_dir(e, cache) for e in compatible], user.texts, classes)
        single = {e.model: accuracy(p, y) for e, p in zip(compatible, probs, strict=True)}
        _, chosen = R.choose(matches, classes, R.DEFAULT_TOP)  # what `market reuse` takes
        top = [probs[compatible.index(m.entry)] for m in chosen]
        sel, _ = R.select([m.entry for m in chosen], top, user.x)
        out[domain] = {"n_compatible": len(compatible), "top1_model": compatible[0].model,
                       "top1": single[compatible[0].model], "select_top3": accuracy(sel, y),
                       "average_top3": accuracy(R.average(top), y), "suitable": sum(m.suitable for m in matches),
                       "best_in_market": max(single.values()), "best_model": max(single, key=single.get),
                       "average_all": float(np.mean(list(single.values()))), "single": single}
        log(f"reuse {domain}: top-1 {out[domain]['top1']:.3f} average {out[domain]['average_top3']:.3f} "
            f"best {out[domain]['best_in_market']:.3f} mean {out[domain]['average_all']:.3f}")
    res["reuse"] = out
    save(res)


def labels_part(args: argparse.Namespace, res: dict[str, Any]) -> None:
    """With k labels: every learner is :func:`fit_augmented` (a logistic regression whose L2 strength
    cross-validation on the k labels chooses), on different features, so the comparison is fair."""
    import numpy as np

    from crowdforge.market import reuse as R
    from crowdforge.market.features import embed
    from crowdforge.market.search import search, user_task
    from crowdforge.modeling.inference import encode_texts, load_ensemble

    _, paths, entries = market(args)
    cache = paths.cache / "market"
    out: dict[str, Any] = {}
    for domain, b in res["build"].items():
        classes = b["classes"]
        user_df, pool = task_frame(args, domain, "user"), task_frame(args, domain, "pool")
        index = {c: i for i, c in enumerate(classes)}
        y, y_pool = user_df["label"].map(index).to_numpy(), pool["label"].map(index).to_numpy()
        user = user_task(user_df["text"].tolist(), classes)
        _, chosen = R.choose(search(user, entries)[0], classes, R.DEFAULT_TOP)
        dirs = [R.ensemble_dir(m.entry, cache) for m in chosen]
        p_user = R.model_probs(dirs, user.texts, classes)
        p_pool = R.model_probs(dirs, pool["text"].tolist(), classes)
        best = load_ensemble(dirs[0])
        key = max(best.members, key=lambda m: m.ensemble_weight).encoder
        enc = best.encoders[key]
        feats = {"best_match": (encode_texts(enc, best.tokenizer, user.texts, best.max_length),
                                encode_texts(enc, best.tokenizer, pool["text"].tolist(), best.max_length)),
                 "base": (user.x, embed(pool["text"].tolist()))}
        rows: dict[str, Any] = {}
        for k in SHOTS:
            scores: dict[str, list[float]] = {name: [] for name in LEARNERS}
            for draw in range(LABEL_DRAWS):
                idx = np.random.default_rng(args.seed + draw).permutation(len(pool))[:k]
                keep = R.prune([p[idx] for p in p_pool], y_pool[idx])
                scores["reuse_prune"].append(accuracy(R.average([p_user[i] for i in keep]), y))
                aug = R.fit_augmented(feats["base"][1][idx], [p[idx] for p in p_pool], y_pool[idx], classes)
                scores["reuse_augment"].append(accuracy(aug.predict_proba(user.x, p_user), y))
                for name, feat in (("finetune_best_match", "best_match"), ("base_backbone", "base")):
                    x_user, x_pool = feats[feat]
                    head = R.fit_augmented(x_pool[idx], [], y_pool[idx], classes)
                    scores[name].append(accuracy(head.predict_proba(x_user, []), y))
            rows[str(k)] = {name: float(np.mean(v)) for name, v in scores.items()}
        out[domain] = rows
        log(f"labels {domain}: {rows}")
    res["labels"] = out
    save(res)


# --- results ----------------------------------------------------------------------------------------
def save(res: dict[str, Any]) -> None:
    from crowdforge import io

    io.write_json(RESULTS, res)


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def markdown(res: dict[str, Any], others: Sequence[dict[str, Any]] = ()) -> str:
    """The BENCHMARKS.md section for ``res``, plus the goals judged on ``others`` (builds at other seeds)."""
    lines = [(f"Command: `{res.get('command', 'python bench/market.py')}` on {res.get('machine', '?')}; "
             f"{res.get('date', '')}. Results file `.crowdforge/bench/market.json` (rerender: `--from-json`)."), ""]
    b = res.get("build", {})
    if b:
        lines += [(f"The market: {len(b)} models, each the default pipeline with one `partial-3` member on a simulated "
                  f"crowd (3 labels per item) over {next(iter(b.values()))['n_items']} texts of its domain."), "",
                  "| model | classes | test accuracy | pipeline s | register s (with specification) |",
                  "|---|---|---|---|---|"]
        lines += [f"| {d} | {len(v['classes'])} | {pct(v['test_accuracy'])} | {v['seconds']} "
                  f"| {v['register_seconds']} |" for d, v in b.items()]
    s = res.get("search", {})
    if s:
        ins = [v for v in s.values() if v["in_domain"]]
        outs = [v for v in s.values() if not v["in_domain"]]
        right = [v["ranking"][0][1] for v in ins if v["right"]]
        wrong = [r[1] for v in ins for r in v["ranking"][1:]]
        lines += ["", (f"**Search** (no classes given): top-1 right on {sum(v['right'] for v in ins)} of {len(ins)} "
                  f"in-domain tasks; {sum(not v['suitable'] for v in outs)} of {len(outs)} out-of-domain tasks "
                  f"flagged \"no suitable model\"; in-domain best matches judged suitable: "
                  f"{sum(v['suitable'] for v in ins)} of {len(ins)}. MMD^2 of the right model "
                  f"{mean(right):.4f} (mean) vs the wrong ones {mean(wrong):.4f}. Search over 100 registered "
                  f"specifications: {res.get('search_100_models_seconds')} s after the first import."), "",
                  "| user task | top-1 | right | verdict | x band | runner-up (x band) |", "|---|---|---|---|---|---|"]
        for name, v in s.items():
            runner = v["ranking"][1] if len(v["ranking"]) > 1 else ("-", 0, 0)
            lines.append(f"| {name} | {v['top1']} | {'' if v['right'] is None else ('yes' if v['right'] else 'NO')} "
                         f"| {v['verdict']} | {v['ranking'][0][2]} | {runner[0]} ({runner[2]}) |")
    r = res.get("reuse", {})
    if r:
        lines += ["", "**Data-free reuse** (accuracy on the user's texts; the user names the classes):", "",
                  ("| task | models with its classes | top-1 match | job selector (reuse's models) "
                  "| average (reuse's models; the default) | best in market | average of all |"),
                  "|---|---|---|---|---|---|---|"]
        for d, v in r.items():
            lines.append(f"| {d} | {v['n_compatible']} | {pct(v['top1'])} | {pct(v['select_top3'])} "
                         f"| {pct(v['average_top3'])} | {pct(v['best_in_market'])} ({v['best_model']}) "
                         f"| {pct(v['average_all'])} |")
        multi = [v for v in r.values() if v["n_compatible"] > 1]
        for key, what in (("average_top3", "Averaging the models reuse chooses (`market reuse`'s default)"),
                          ("select_top3", "The job selector")):
            gaps = [v["best_in_market"] - v[key] for v in r.values()]
            lines += ["", (f"{what} vs the best model in the market: mean gap {100 * mean(gaps):.1f} points, "
                           f"worst {100 * max(gaps):.1f}, within 2 points on {sum(g <= 0.02 + 1e-9 for g in gaps)} "
                           f"of {len(gaps)} tasks; above the average of all models on "
                           f"{sum(v[key] > v['average_all'] for v in multi)} of the {len(multi)} tasks more than "
                           "one model can serve.")]
    lab = res.get("labels", {})
    if lab:
        lines += ["", f"**With labels** (mean accuracy over {LABEL_DRAWS} label draws):", "",
                  ("| task | labels | (a) reuse, augmented (default) | (a') reuse, pruned | (b) best match + new head "
                   "| (c) base backbone + new head |"), "|---|---|---|---|---|---|"]
        for d, rows in lab.items():
            for k, v in sorted(rows.items(), key=lambda kv: int(kv[0])):
                lines.append(f"| {d} | {k} | {pct(v['reuse_augment'])} | {pct(v['reuse_prune'])} "
                             f"| {pct(v['finetune_best_match'])} | {pct(v['base_backbone'])} |")
        gains = [label_gain(v["100"]) for v in lab.values()]
        own = [v["100"]["reuse_augment"] - v["100"]["base_backbone"] for v in lab.values()]
        lines += ["", (f"At 100 labels, the best of (a)/(a')/(b) minus (c): mean {100 * mean(gains):+.1f} points, "
                  f"smallest {100 * min(gains):+.1f}; the default (a) alone minus (c): mean {100 * mean(own):+.1f}, "
                  f"smallest {100 * min(own):+.1f}.")]
    lines += ["", "Goals:", "", *goals(res)]
    for other in others:
        lines += ["", f"The same goals on another build (`{other.get('command', '')}`):", "", *goals(other)]
    lines += ["", *[n for note in NOTES for n in (note, "")]]
    return "\n".join(lines) + "\n"


NOTES = [
    ("Notes. (a) fits a logistic regression on the labels over each text's MiniLM embedding and the chosen "
     "models' log-probabilities; (b) is the best match's encoder (its heaviest member's), frozen, with a new "
     "logistic-regression head on the labels; (c) the same head on the packaged MiniLM's embeddings (the "
     "features (a) starts from); every head's L2 strength is chosen by cross-validated log-loss on the labels. "
     "(b) and (c) are a cheap, fair stand-in for fine-tuning, not `pretrain.backbone: models:/...` through the "
     "whole pipeline (that path is tested, not benchmarked)."),
    ("Reuse takes the closest *suitable* models with the task's classes (`choose`), here almost always the "
     "top-1 match alone, so averaging and the job selector score like it. Averaging the 3 nearest models with the "
     "classes, suitable or not, was also measured: on this market it is up to 4.5 points below the best model "
     "(sst2: the demo-topic models are worse on movie reviews), while on a market of weaker models (600 crowd "
     "texts each, below; a scratch run of this benchmark's code on 2026-12-03) it was the better rule (worst gap "
     "1.5 against 4.5; the 2026-12-02 run of that market had 4.0 with it). The suitable-only rule was kept "
     "because it has a reason that does not depend on the market (a far model's accuracy on your texts is "
     "unknown), not because of either run."),
    ("The market's models are trained on up to 2,000 crowd texts each (`--n-train`; weather has 499). Until "
     "2026-12-03 they had 600: then the MD-Agreement model learned nothing (its own ensemble report: no better "
     "than always answering not_offensive), so no reuse could beat the base backbone there; with 2,000 it "
     "reaches 73 % on its test split against 64 % for the majority class. The number was raised after seeing "
     "that. At 600 texts per model the with-labels goal fell short on MD-Agreement (augmentation included: "
     "68.3 against 69.0 for the base backbone at 100 labels in the scratch run)."),
    ("Runs on 2026-12-03: seed 0 built 14:19-14:45, then its search, reuse and labels parts were run again "
     "(14:54-15:09) after reuse's rule went back to suitable-only; seed 1 built 14:48-15:15 and its parts ran "
     "again 15:19-15:21 likewise. Both shared the 2 cores with each other and with `make test`, so the seconds "
     "are upper bounds (search over 100 models: 5.08 s at seed 0 under that load, 1.4 s at seed 1). At seed 1, "
     "travel's worst gap is 2.0 (the service model is right on 99.0 % of travel texts, travel's own on 97.0), and "
     "on weather (5 classes) augmentation with 100 labels scores 71.3 against 73.5 for the model alone, which "
     "pruning keeps: a hundred labels over five classes can cost a good model a few points."),
    ("Weather and MD-Agreement have one model with their classes each, so reuse there is that model. The demo "
     "topics share sentence templates; with 2,000 crowd texts each topic's model is 96-99 % right on its topic. "
     "The weather model's test split is 100 tweets (half the ~1,000 tweets train it, the rest are the user's "
     "texts and labels). MD-Agreement's labels are the 5-annotator majority (no independent gold). The "
     "search's constants were fixed before any market run and not changed: the kernel bandwidth by the median "
     "heuristic, the 5 % novelty level, 'more than half' of the texts typical, at least 5 texts per "
     "reduced-set point."),
]


def label_gain(row: dict[str, float]) -> float:
    """The best reuse learner's accuracy minus training from the base backbone, on the same labels."""
    return max(row[name] for name in LEARNERS if name != "base_backbone") - row["base_backbone"]


def goals(res: dict[str, Any]) -> list[str]:
    """The issue's goals, judged from the rows."""
    out = []
    s, r, lab = res.get("search", {}), res.get("reuse", {}), res.get("labels", {})
    if s:
        ins = [v for v in s.values() if v["in_domain"]]
        outs = [v for v in s.values() if not v["in_domain"]]
        share = sum(v["right"] for v in ins) / len(ins)
        flagged = all(not v["suitable"] for v in outs)
        out.append(f"- top-1 retrieval on at least 90 % of in-domain tasks: {'met' if share >= 0.9 else 'not met'} "
                   f"({100 * share:.0f} %); every out-of-domain task flagged: {'met' if flagged else 'not met'}")
    if r:
        gaps = [v["best_in_market"] - v["average_top3"] for v in r.values()]
        above = [v["average_top3"] > v["average_all"] for v in r.values() if v["n_compatible"] > 1]
        ok = all(g <= 0.02 + 1e-9 for g in gaps) and all(above)
        within = sum(g <= 0.02 + 1e-9 for g in gaps)
        out.append(f"- data-free reuse (the default, averaging) within 2 points of the best model and above the "
                   f"average of all: {'met' if ok else 'not met'} (within 2 on {within} of {len(gaps)}, worst gap "
                   f"{100 * max(gaps):.1f}; above the average on {sum(above)} of {len(above)})")
    if lab:
        gains = {d: label_gain(v["100"]) for d, v in lab.items()}
        short = [f"{d} {100 * g:+.1f}" for d, g in gains.items() if g < 0.05]
        out.append(f"- with 100 labels, reuse or the match at least 5 points above the base backbone: "
                   f"{'met' if not short else 'not met'} ({len(gains) - len(short)} of {len(gains)} tasks"
                   + (f"; short: {', '.join(short)})" if short else ")"))
    if res.get("search_100_models_seconds") is not None:
        out.append(f"- search over 100 registered models under 10 s after the first import: "
                   f"{'met' if res['search_100_models_seconds'] < 10 else 'not met'} "
                   f"({res['search_100_models_seconds']} s)")
    return out


def write_section(md: str, path: Path = ROOT / "BENCHMARKS.md") -> None:
    text = path.read_text(encoding="utf-8")
    head = "## Model market (`make bench-market`)\n"
    if head not in text:
        text = text.rstrip() + "\n\n" + head + "\n"
    i = text.index(head) + len(head)
    j = text.find("\n## ", i)
    j = len(text) if j < 0 else j + 1
    path.write_text(text[:i] + "\n" + md.rstrip() + "\n" + ("\n" + text[j:] if j < len(text) else ""),
                    encoding="utf-8")


def main() -> int:
    global RESULTS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="build,search,reuse,labels")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "crowdforge-bench-market")
    ap.add_argument("--n-train", type=int, default=2000, help="crowd texts per model (fewer where a set has fewer)")
    ap.add_argument("--n-test", type=int, default=300)
    ap.add_argument("--n-user", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--domains", default="", help="build only these domains (comma-separated; default all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--results", type=Path, default=RESULTS, help="the results file (one per --seed and --work)")
    ap.add_argument("--from-json", action="store_true", help="only re-render BENCHMARKS.md from the results file")
    ap.add_argument("--other-results", default="", help="with --from-json: results files of other build seeds, "
                    "comma-separated, whose goals are listed too")
    ap.add_argument("--fresh", action="store_true", help="forget earlier results (build skips the domains it has)")
    args = ap.parse_args()
    RESULTS = args.results
    if args.from_json:
        others = [json.loads(Path(f).read_text()) for f in args.other_results.split(",") if f]
        write_section(markdown(json.loads(RESULTS.read_text()), others))
        return 0
    if not SHARED.exists():
        print(f"skipped: {SHARED} is absent (the market benchmark needs the shared text sets)")
        return 0
    from crowdforge.runtime import configure_environment

    configure_environment()
    args.work.mkdir(parents=True, exist_ok=True)
    res = json.loads(RESULTS.read_text()) if RESULTS.exists() and not args.fresh else {}
    res.update({"command": "python bench/market.py " + " ".join(sys.argv[1:]),
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
                "date": time.strftime("%Y-%m-%d")})
    for part, fn in (("build", build), ("search", search_part), ("reuse", reuse_part), ("labels", labels_part)):
        if part in args.parts.split(","):
            fn(args, res)
            write_section(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
