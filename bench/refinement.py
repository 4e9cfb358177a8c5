"""Label refinement: rounds, regularisation and sample selection, on SST-2, weather and two entity-matching sets.

Run with ``python bench/refinement.py`` (``--sets`` to choose). Reads ``../shared/datasets`` at run
time and skips with a message when it is absent. For each set the crowd of the learning / entity-
matching benchmarks is simulated (same seeds, same worker mix) and crowdforge's ingest ... pretrain
stages run; then the soft labels are refined as the finetune agent does
(``crowdforge.agents.finetune.refine``) with 0 rounds (the reputation stage's labels), 2 rounds (the
default for single texts) and to convergence (``finetune.refine_rounds: converge``, the default on
pair tasks: at most ``refine_max_rounds``, until a round moves the labels by less than
``refine_tol``), with the contributors kept or re-estimated (``refine_workers``), with the default C and with
``refine_c: auto``, and with small-loss sample selection
(``finetune.sample_selection``) on top; on the pair sets also the true labels, the ceiling.
Reported: the accuracy of the training labels against the truth and, on the pair
sets, the match F1 of a ``pair_features`` member trained on them, scored on the literature VALID
split (never the test split the other benchmarks report). Results go to
``.crowdforge/bench/refinement.json`` and the section "## Label refinement (bench/refinement.py)".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import entity_matching as em
import learning
from report_files import write_json, write_section

SECTION = "## Label refinement (bench/refinement.py)"
# (label, rounds: 0 / a number / None = to convergence, refine_c, small-loss sample selection on top,
#  refine_workers: contributors' confusion matrices re-estimated every round)
VARIANTS = (("reputation labels (no refinement)", 0, 0.1, False, False),
            ("2 rounds, contributors kept", 2, 0.1, False, False),
            ("2 rounds, contributors re-estimated (the default on single texts)", 2, 0.1, False, True),
            ("2 rounds, refine_c auto", 2, "auto", False, False),
            ("to convergence, contributors kept", None, 0.1, False, False),
            ("to convergence, contributors re-estimated (the default on pairs)", None, 0.1, False, True),
            ("to convergence, refine_c auto", None, "auto", False, False),
            ("2 rounds, refine_c auto + small-loss selection", 2, "auto", True, False),
            ("to convergence, refine_c auto + small-loss selection", None, "auto", True, False))


def prepare(name: str, raw: Path, work: Path, seed: int) -> tuple[list[str], dict[str, str], dict[str, Any]]:
    """The simulated crowd of ``name`` under ``raw``: (classes, truth by item id, overrides)."""
    if name == "sst2":
        info = learning.prepare_sst2(raw, work, 3000, seed)
        return info["classes"], info["truth"], {}
    if name == "weather":  # the truth: each tweet's 20-judgment majority
        raw.mkdir(parents=True, exist_ok=True)
        info = learning.prepare_weather(raw, 3, 316, seed)
        return info["classes"], info["truth"], {}
    state: dict[str, Any] = {}
    em.prepare_em(name, raw, work, 1000 if name == "abt_buy" else 1500, None, seed, state)
    return em.CLASSES, state["truth"], dict(em.DEFAULT_OVERRIDES)


def valid_pairs(name: str) -> tuple[list[str], list[int]]:
    left, right = em.record_texts(em.DATA / name / "tableA.csv"), em.record_texts(em.DATA / name / "tableB.csv")
    df = em.pair_frame(em.DATA / name, "valid", left, right)
    return df["text"].tolist(), [int(lbl == "match") for lbl in df["label"]]


def measure(name: str, work: Path, seed: int, threads: int) -> dict[str, Any]:
    import numpy as np
    import pandas as pd
    from sklearn.metrics import f1_score

    from crowdforge.agents.finetune import refine
    from crowdforge.modeling.members import class_balance_factors, encoder_source, load_split
    from crowdforge.modeling.pair_features import PairSimilarityModel, is_pair_task
    from crowdforge.modeling.refine import small_loss_weights
    from crowdforge.paths import Paths

    root = work / name
    classes, truth, overrides = prepare(name, root / "data" / "raw", work, seed)
    params = learning.bench_params(classes, threads, overrides)
    learning.run_agents(params, root, ["ingest", "validate", "reputation", "augment", "pretrain"])
    paths = Paths(root)
    texts, q, w, _ = load_split(paths.train, classes)
    df = pd.read_parquet(paths.train, columns=["item_id", "augmented"])
    keep = (~df["augmented"].astype(bool) & df["item_id"].isin(truth)).to_numpy()
    y = np.array([classes.index(truth[i]) if k else -1 for i, k in zip(df["item_id"], keep)])
    backbone = encoder_source(paths, params)[0]
    out: dict[str, Any] = {"n_train_rows": len(texts), "n_scored": int(keep.sum()), "variants": {}}
    pairs = is_pair_task(texts)
    v_texts, v_y = valid_pairs(name) if pairs else ([], [])

    def pair_member_f1(r: np.ndarray, weights: np.ndarray) -> float:
        model = PairSimilarityModel(len(classes), seed).fit(texts, r, weights * class_balance_factors(r, weights,
                                                                                                     "auto"))
        return float(f1_score(v_y, model.predict_proba(v_texts).argmax(1)))

    for label, rounds, c_reg, select, workers in VARIANTS:
        t0 = time.perf_counter()
        weights = w
        if rounds == 0:
            r, trace = q, []
        else:  # as finetune.train_member: the weight follows the refined confidence
            ft = dataclasses.replace(params.finetune, refine_rounds="converge" if rounds is None else rounds,
                                     refine_c=c_reg, refine_workers=workers)
            ref = refine(dataclasses.replace(params, finetune=ft), paths, backbone, texts, q, w, ft.seed)
            r, trace, p_oof, c_chosen = ref.r, ref.trace, ref.p_oof, ref.c_reg
            weights = w / np.clip(q.max(1), 1e-12, None) * r.max(1)
        row: dict[str, Any] = {"rounds": len(trace), "seconds": round(time.perf_counter() - t0, 1),
                               "label_accuracy": float((r.argmax(1)[keep] == y[keep]).mean()),
                               "c_reg": None if rounds == 0 else c_chosen,
                               "shrinkage": [] if rounds == 0 else ref.shrinkage}
        if select:
            clean = small_loss_weights(p_oof, r, seed)
            weights = weights * clean
            wrong = r.argmax(1)[keep] != y[keep]
            row["selection"] = {"wrong_labels_below_half": float((clean[keep][wrong] < 0.5).mean()),
                                "right_labels_below_half": float((clean[keep][~wrong] < 0.5).mean())}
        if pairs:
            row["pair_member_valid_match_f1"] = pair_member_f1(r, weights)
        out["variants"][label] = row
        learning.log(f"{name}: {label}: {row}")
    if pairs:  # the ceiling: the same member on the true labels
        src = pd.read_parquet(paths.train, columns=["item_id", "source_item_id"])
        src = src["source_item_id"].fillna(src["item_id"]).astype(str)
        gold = np.eye(len(classes))[[classes.index(truth[i]) for i in src]]
        out["variants"]["true labels (the ceiling)"] = {"rounds": 0, "seconds": 0.0, "label_accuracy": 1.0,
                                                       "pair_member_valid_match_f1": pair_member_f1(gold, w)}
    return out


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [(f"Command: `{res['command']}` ({res['date']}; {m['cores']} cores shared with other work, Python "
             f"{m['python']}, torch threads {res['threads']}; total {res['seconds'] / 60:.1f} min)."), "",
             ("Crowds as in the learning and entity-matching benchmarks (SST-2: 3,000 sentences; Abt-Buy / "
             "Amazon-Google: 1,000 / 1,500 train pairs; 60 simulated contributors, 3 labels per item; weather: "
             "the real crowd, 3 of the 20 judgments per tweet); the soft "
             "labels after the reputation stage, refined as the finetune agent does. Label accuracy: the training "
             "labels' arg-max against the truth (original rows, not augmented copies; on weather the 20-judgment "
             "majority). Pair member: a "
             "`pair_features` member trained on those labels, match F1 on the literature VALID split "
             "(the test split stays for the other benchmarks)."), "",
             ("Seconds: the refinement's wall time; the first refined row of a set also embeds its texts (cached "
             "after)."), "",
             ("Small-loss selection (`finetune.sample_selection: small_loss`): each item's weight times its clean "
              "probability from a two-component mixture on its loss under the refinement's out-of-fold classifier; "
              "the selection column gives the share of wrong / right training labels weighted below one half."), "",
             ("C: the logistic regression's inverse regularisation, 0.1 by default; `refine_c: auto` picks it "
              "from 0.01-3 by the held-out likelihood of the crowd labels."), "",
             ("Contributors kept: the reputation stage's posteriors stay the crowd's evidence in every round; "
              "re-estimated (`finetune.refine_workers`, the default): every round re-estimates each "
              "contributor's confusion matrix from the refined labels and the gold checks (Raykar et al. 2010), "
              "shrunk toward one accuracy per contributor as strongly as held-out labels say (the strengths "
              "chosen are listed after the table)."),
             "",
             ("| set | labels | rounds | C | label accuracy % | selection: wrong / right below 1/2 % | "
              "pair member valid match F1 % | seconds |"),
             "|---|---|---|---|---|---|---|---|"]
    for name, r in res["sets"].items():
        for label, v in r.get("variants", {}).items():
            f1, sel = v.get("pair_member_valid_match_f1"), v.get("selection")
            sel_txt = (f"{100 * sel['wrong_labels_below_half']:.0f} / {100 * sel['right_labels_below_half']:.0f}"
                       if sel else "–")
            c_txt = "–" if v.get("c_reg") is None else f"{v['c_reg']:g}"
            lines.append(f"| {name} | {label} | {v['rounds']} | {c_txt} | {100 * v['label_accuracy']:.1f} | "
                         f"{sel_txt} | {'–' if f1 is None else f'{100 * f1:.1f}'} | {v['seconds']:.0f} |")
    def strengths(v: dict[str, Any]) -> str:
        return ", ".join(f"{t:g}" for t in sorted(set(v["shrinkage"])))

    chosen = [f"{name}: " + "; ".join(f"{label.split(',')[0]}: {strengths(v)}"
                                     for label, v in r.get("variants", {}).items() if v.get("shrinkage"))
              for name, r in res["sets"].items()]
    lines += ["", "Shrinkage of the re-estimated contributors (pseudo-labels per confusion row toward the one-coin "
              "matrix, 1e+06 = one accuracy each, 0 = a free matrix; the distinct values chosen over the rounds): "
              + " | ".join(chosen) + "."]
    for note in res.get("notes", []):  # what the rows say, added to a results file before --from-json
        lines += ["", note]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="sst2,weather,abt_buy,amazon_google")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    ap.add_argument("--from-json", type=Path, help="only re-render the BENCHMARKS.md section from a results file")
    args = ap.parse_args()
    if args.from_json:
        res = json.loads(args.from_json.read_text())
        write_section(SECTION, markdown(res), ROOT / "BENCHMARKS.md")
        print(markdown(res))
        return 0
    if not learning.SHARED.is_dir():
        print(f"bench/refinement.py: {learning.SHARED} is absent; skipping (the benchmark needs the shared datasets).")
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from crowdforge.runtime import configure_environment, set_torch_threads

    configure_environment()
    set_torch_threads(args.threads)
    res: dict[str, Any] = {"command": "python bench/refinement.py " + " ".join(sys.argv[1:]),
                           "date": time.strftime("%Y-%m-%d %H:%M"), "threads": args.threads,
                           "machine": {"cores": os.cpu_count(), "python": platform.python_version()}, "sets": {}}
    t0 = time.perf_counter()
    out = ROOT / ".crowdforge" / "bench" / "refinement.json"
    with tempfile.TemporaryDirectory(prefix="bench-refinement-") as tmp:
        for name in args.sets.split(","):
            res["sets"][name] = measure(name, Path(tmp), args.seed, args.threads)
            res["seconds"] = time.perf_counter() - t0
            write_json(res, out)
    if not args.no_write:
        write_section(SECTION, markdown(res), ROOT / "BENCHMARKS.md")
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
