"""Entity-matching benchmark: gold-trained vs naive vs crowdforge on product record pairs.

Run with ``python bench/entity_matching.py`` (``--help`` for the options; ``--quick`` for a smoke
run of a few minutes). Reads ``../shared/datasets/entity_matching/{amazon_google,abt_buy}`` at run
time (never copies them into the project) and skips with a message when they are absent.

Each record pair becomes one text, ``<left record> [SEP] <right record>``, a record being its
non-empty fields as ``field value`` pieces (``title sony bravia 40 ... manufacturer sony price
999.0``); the pipeline tokenizes such a text as a tokenizer pair with longest-first truncation
(``crowdforge.modeling.tokens``). Classes ``no_match`` / ``match`` (label 0 / 1).

The crowd is simulated on a stratified subsample of the literature TRAIN pairs (``--n-train``,
default 3000; the match share is kept) with the same machinery and worker mix as the SST-2 part of
``bench/learning.py``: 60 contributors (20 % spammers, 10 % adversaries, the rest 60-90 %
accurate), 3 labels per pair, 5 % of the pairs also gold checks. The train pairs left out are the
unlabelled pretraining text. The literature TEST split, as it is, is the frozen gold test split.
The literature VALID split is not used (augment holds valid items out of the crowd pairs as for
SST-2).

(a) gold labels, (b) majority vote: the first partial member and the pair member of the defaults;
(c) the default crowdforge pipeline:
``compare()`` of bench/learning.py, with ``finetune.max_length=128`` and ``pretrain.max_length=128``.
Results go to ``.crowdforge/bench/entity_matching.json`` (rewritten atomically after every pipeline,
so a killed run keeps what it measured) and, at the end, to the section
"## Entity matching (bench/entity_matching.py)" of BENCHMARKS.md (that section only).
"""

from __future__ import annotations

import argparse
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

import learning  # bench/learning.py: compare(), bench_params(), ...
from report_files import write_json, write_section

DATA = learning.SHARED / "entity_matching"
SETS = {"amazon_google": "Amazon-Google", "abt_buy": "Abt-Buy"}
CLASSES = ["no_match", "match"]
LABELS = {"0": "no_match", "1": "match"}
SECTION = "## Entity matching (bench/entity_matching.py)"
DEFAULT_OVERRIDES = {"finetune.max_length": 128, "pretrain.max_length": 128}
PIPELINES = (("gold", "(a) gold labels, partial + pair member"), ("naive", "(b) majority vote, partial + pair member"),
             ("crowdforge", "(c) crowdforge default pipeline"))
log = learning.log


# --- data -----------------------------------------------------------------------------------------


def record_texts(table: Path) -> dict[str, str]:
    """``id -> "field value field value ..."`` over the non-empty fields (NaN/empty skipped)."""
    import pandas as pd

    df = pd.read_csv(table, dtype=str, keep_default_na=False)
    fields = [c for c in df.columns if c != "id"]
    out: dict[str, str] = {}
    for row in df.itertuples(index=False):
        values = row._asdict()
        pieces = []
        for f in fields:
            v = " ".join(str(values[f]).split())
            if v and v.lower() != "nan":
                pieces.append(f"{f} {v}")
        out[str(values["id"])] = " ".join(pieces)
    return out


def pair_frame(folder: Path, split: str, left: dict[str, str], right: dict[str, str]) -> Any:
    """``text,label`` of one literature split, one row per pair in file order."""
    import pandas as pd

    p = pd.read_csv(folder / f"{split}.csv", dtype=str, keep_default_na=False)
    text = [f"{left[a]} [SEP] {right[b]}" for a, b in zip(p["ltable_id"], p["rtable_id"], strict=True)]
    return pd.DataFrame({"text": text, "label": p["label"].map(LABELS), "ltable_id": p["ltable_id"],
                         "rtable_id": p["rtable_id"]})


def stratified_pick(labels: Any, n: int, rng: Any) -> Any:
    """Sorted positions of ``n`` rows, each class in its share of ``labels`` (seeded)."""
    import numpy as np

    if n >= len(labels):
        return np.arange(len(labels))
    counts = labels.value_counts()
    want = {c: round(n * k / len(labels)) for c, k in counts.items()}
    want[counts.index[0]] += n - sum(want.values())  # rounding goes to the largest class
    picks = [rng.permutation(np.flatnonzero((labels == c).to_numpy()))[:k] for c, k in want.items()]
    return np.sort(np.concatenate(picks))


def prepare_em(name: str, raw: Path, work: Path, n_train: int, n_test: int | None, seed: int,
               state: dict[str, Any]) -> dict[str, Any]:
    """Simulated crowd on ``n_train`` train pairs (stratified); test = the literature test split
    (all of it, or a stratified ``n_test`` pairs in quick runs); the other train pairs are unlabelled text."""
    import numpy as np
    import pandas as pd

    from crowdforge.simulate.crowd import frame_to_csv, simulate_crowd_from_file

    folder = DATA / name
    left, right = record_texts(folder / "tableA.csv"), record_texts(folder / "tableB.csv")
    train_all, test = pair_frame(folder, "train", left, right), pair_frame(folder, "test", left, right)
    rng = np.random.default_rng(seed)
    pick = stratified_pick(train_all["label"], n_train, rng)
    rest = np.setdiff1d(np.arange(len(train_all)), pick)
    train = train_all.iloc[pick]
    if n_test is not None and n_test < len(test):
        test = test.iloc[stratified_pick(test["label"], n_test, rng)]
    test = test.reset_index(drop=True)
    gold_file = work / f"{name}_train_gold.csv"
    gold_file.write_bytes(frame_to_csv(train[["text", "label"]]))
    truth_dir = work / f"truth-{name}"
    summary = simulate_crowd_from_file(
        gold_file, raw, n_contributors=60, seed=seed, labels_per_item=3, spammer_share=0.2,
        adversary_share=0.1, gold_check_fraction=0.05, gold_test_fraction=0.0, truth_dir=truth_dir,
    )
    gold = pd.read_csv(raw / "gold.csv", dtype=str, keep_default_na=False)
    test_rows = pd.DataFrame({"item_id": [f"t{i:06d}" for i in range(len(test))], "text": test["text"],
                              "label": test["label"], "split": "test"})
    (raw / "gold.csv").write_bytes(frame_to_csv(pd.concat([gold, test_rows], ignore_index=True)))
    (raw / "unlabeled").mkdir(parents=True, exist_ok=True)
    (raw / "unlabeled" / f"{name}_rest.txt").write_text("\n".join(train_all.iloc[rest]["text"]) + "\n",
                                                        encoding="utf-8")
    truth = pd.read_csv(truth_dir / "items.csv", dtype=str, keep_default_na=False)
    truth_map = dict(zip(truth["item_id"], truth["label"], strict=True))
    state["truth"] = truth_map
    state["t_prepared"] = time.perf_counter()
    n_chars = pd.concat([train["text"], test["text"]]).str.len()
    info = {
        "n_train_pairs_available": len(train_all), "n_train_pairs": len(train),
        "train_match_share_available": float((train_all["label"] == "match").mean()),
        "train_match_share": float((train["label"] == "match").mean()),
        "n_duplicate_train_texts_dropped": len(train) - summary["n_items"],
        "n_crowd_items": summary["n_items"], "n_labels": summary["n_labels"],
        "n_gold_check": summary["n_gold_check"], "n_test": len(test_rows),
        "test_match_share": float((test_rows["label"] == "match").mean()),
        "n_unlabeled": len(rest), "kinds": summary["kinds"],
        "text_chars_median": float(n_chars.median()), "text_chars_max": int(n_chars.max()),
    }
    state["data"] = dict(info)
    return {"classes": list(CLASSES), "truth": truth_map, **info}


# --- metrics --------------------------------------------------------------------------------------


def project_metrics(root: Path) -> dict[str, Any]:
    """The headline metrics of one project folder's ensemble report (reports/ensemble.json)."""
    rep = json.loads((root / "reports" / "ensemble.json").read_text())
    out = {"test_match_f1": rep["test_per_class_f1"]["match"], "test_macro_f1": rep["test_macro_f1"],
           "test_accuracy": rep["test_accuracy"], "test_majority_accuracy": rep["test_majority_accuracy"],
           "test_majority_macro_f1": rep["test_majority_macro_f1"], "test_per_class_f1": rep["test_per_class_f1"],
           "test_ece": rep["test_ece"], "test_n": rep["test_n"]}
    fin = root / "reports" / "finetune.json"
    if fin.exists():  # which members ended up how (e.g. retrained full after learning nothing)
        f = json.loads(fin.read_text())
        members = f.get("members")
        if isinstance(members, dict):
            out["finetune_members"] = {k: {m: v.get(m) for m in ("strategy", "epochs", "retrained_full", "best_epoch",
                                                                  "valid_accuracy", "valid_macro_f1") if m in v}
                                       for k, v in members.items() if isinstance(v, dict)}
    return out


def label_quality(labels: dict[str, str], truth: dict[str, str]) -> dict[str, Any]:
    """Accuracy and match-class precision/recall/F1 of item labels against the gold of the crowd items."""
    keys = [k for k in labels if k in truth]
    tp = sum(labels[k] == "match" and truth[k] == "match" for k in keys)
    fp = sum(labels[k] == "match" and truth[k] != "match" for k in keys)
    fn = sum(labels[k] != "match" and truth[k] == "match" for k in keys)
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    return {"n": len(keys), "accuracy": sum(labels[k] == truth[k] for k in keys) / max(len(keys), 1),
            "match_precision": prec, "match_recall": rec,
            "match_f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0, "n_match_labels": tp + fp}


def crowd_side_facts(root_c: Path, truth: dict[str, str], mv_labels: dict[str, str]) -> dict[str, Any]:
    """(c)'s truth inference and validation on pair texts: label quality, quarantined rows by reason."""
    import pandas as pd

    out: dict[str, Any] = {"majority_vote": label_quality(mv_labels, truth)}
    lab = pd.read_parquet(root_c / "data" / "processed" / "labels.parquet")
    out["reputation"] = label_quality(dict(zip(lab["item_id"].astype(str), lab["label"].astype(str))), truth)
    q = root_c / "data" / "quarantine" / "quarantined.parquet"
    if q.exists():
        qd = pd.read_parquet(q)
        if len(qd) and "reasons" in qd.columns:
            codes = qd["reasons"].astype(str).str.split(";").explode().str.split(":").str[0]
            out["quarantined_rows"] = len(qd)
            out["quarantined_by_reason"] = {str(k): int(v) for k, v in codes.value_counts().items()}
            if "item_id" in qd.columns:
                items = set(qd["item_id"].astype(str))
                acc = pd.read_parquet(root_c / "data" / "interim" / "accepted.parquet", columns=["item_id"])
                lost = items - set(acc["item_id"].astype(str))
                out["items_quarantined_in_some_row"] = len(items)
                out["items_without_any_accepted_label"] = len(lost)
                out["match_items_without_any_accepted_label"] = sum(truth.get(i) == "match" for i in lost)
        else:
            out["quarantined_rows"] = len(qd)
    from crowdforge.paths import Paths

    train = Paths(root_c).train
    if train.exists():
        tr = pd.read_parquet(train, columns=["text", "augmented", "label"])
        aug = tr[tr["augmented"].astype(bool)]
        out["augmented_rows"] = len(aug)
        out["augmented_rows_by_label"] = {str(k): int(v) for k, v in aug["label"].value_counts().items()}
        out["augmented_rows_without_separator"] = int((~aug["text"].str.contains("[SEP]", regex=False)).sum())
    return out


# --- the run --------------------------------------------------------------------------------------


def run_set(name: str, args: argparse.Namespace, work: Path, overrides: dict[str, Any],
            res: dict[str, Any], save: Any) -> None:
    """compare() on one dataset, saving after (c), (b) and (a) each (single_member is wrapped)."""
    state: dict[str, Any] = {}
    entry: dict[str, Any] = res["sets"].setdefault(name, {"status": "running"})
    root_c = work / f"{name}-crowdforge"
    original = learning.single_member

    def crowdforge_done(mv_labels: dict[str, str]) -> None:
        if "crowdforge" in entry:
            return
        entry["data"] = state.get("data")
        entry["crowdforge"] = {**project_metrics(root_c),
                               "seconds": round(time.perf_counter() - state["t_prepared"], 1)}
        try:
            entry["crowd"] = crowd_side_facts(root_c, state["truth"], mv_labels)
        except Exception as exc:  # noqa: BLE001 -- a diagnostic must not stop the benchmark
            entry["crowd"] = {"error": repr(exc)}
        entry["status"] = "crowdforge done"
        save()
        log(f"{name}: (c) match F1 {entry['crowdforge']['test_match_f1']:.3f}, "
            f"macro F1 {entry['crowdforge']['test_macro_f1']:.3f}")

    def hooked(params: Any, root: Path, item_labels: dict[str, str], label_source: str) -> dict[str, Any]:
        crowdforge_done(item_labels if label_source == "naive" else {})  # (c) has just finished: keep it first
        out = original(params, root, item_labels, label_source)
        out.update(project_metrics(root))
        entry[label_source] = out
        entry["status"] = f"{label_source} done"
        save()
        log(f"{name}: ({'b' if label_source == 'naive' else 'a'}) match F1 {out['test_match_f1']:.3f}, "
            f"macro F1 {out['test_macro_f1']:.3f}, {out['seconds']:.0f} s")
        return out

    learning.single_member = hooked
    try:
        result = learning.compare(
            name, lambda raw: prepare_em(name, raw, work, args.n_train_per_set[name], args.n_test, args.seed, state),
            work, args.threads, 1, overrides, not args.crowdforge_only)
    finally:
        learning.single_member = original
    crowdforge_done({})  # --crowdforge-only: no (b) ran to trigger it
    c = result["crowdforge"]
    entry["crowdforge"].update({"seconds": c["seconds"], "stage_seconds": c["stage_seconds"], "n_train": c["n_train"],
                                "n_valid": c["n_valid"], "calibration_source": c["calibration_source"],
                                "members": c["members"], "pretrain": c["pretrain"]})
    entry["label_accuracy"] = result["label_accuracy"]
    entry["data"] = result["data"]
    entry["status"] = "done"
    save()


def goals(res: dict[str, Any]) -> list[dict[str, Any]]:
    sets = res.get("sets", {})
    out = []
    for name, title in SETS.items():
        s = sets.get(name, {})
        if "gold" in s and "crowdforge" in s:
            gap = s["gold"]["test_match_f1"] - s["crowdforge"]["test_match_f1"]
            out.append({"goal": f"{title}: crowdforge match-class F1 within 3 points of gold-trained",
                        "value": f"(a) {100 * s['gold']['test_match_f1']:.1f}, "
                                 f"(c) {100 * s['crowdforge']['test_match_f1']:.1f}: "
                                 f"gap {100 * gap:+.1f} points", "met": gap <= 0.03})
        else:
            out.append({"goal": f"{title}: crowdforge match-class F1 within 3 points of gold-trained",
                        "value": "not measured in this run", "met": None})
    s = sets.get("abt_buy", {})
    if "gold" in s:
        f1 = s["gold"]["test_match_f1"]
        out.append({"goal": "Abt-Buy: gold-trained match-class F1 at least 0.70", "value": f"{f1:.3f}",
                    "met": f1 >= 0.70})
    else:
        out.append({"goal": "Abt-Buy: gold-trained match-class F1 at least 0.70", "value": "not measured in this run",
                    "met": None})
    return out


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    a = res["args"]
    lines = [
        (f"Command: `{res['command']}` ({res['date']}; {m['cores']} cores shared with other work, {m['memory']}, "
         f"Python {m['python']}, torch threads {res['threads']}; load average at start {m['load_start']}, at end "
         f"{m.get('load_end', 'n/a')}; total {res.get('seconds', 0) / 60:.1f} min; params overrides "
         + ", ".join(f"`{k}={v}`" for k, v in res["overrides"].items()) + ")."),
        "",
        (f"Data: the Magellan/DeepMatcher pair splits (shared/datasets/entity_matching). n_train = {a['n_train']}"
         + ("" if not res.get("n_train_note") else f" ({res['n_train_note']})") + ": a "
         "seeded subsample of the literature train pairs, stratified so the match share is kept, goes to a simulated "
         "crowd as SST-2's in the learning benchmark (60 contributors: 20 % spammers, 10 % adversaries, the rest "
         "60-90 % accurate; 3 labels per pair; 5 % of the pairs are gold checks); the other train pairs are the "
         "unlabelled pretraining text. Test = the literature test split"
         + (" (all of it)" if a.get("n_test") is None else f" (stratified subsample of {a['n_test']} pairs)")
         + ". A pair is one text `<left record> [SEP] <right record>` (records as `field value` pieces, empty fields "
           "skipped), tokenized as a tokenizer pair with longest-first truncation. (a) and (b) are the first partial "
           "member and the pair member of (c)'s defaults, trained on the gold / majority-vote labels of the crowd "
           "pairs and weighted on valid (uncalibrated; their class-balanced members decide by the arg-max), reusing "
           "(c)'s ingested rows: their seconds are finetune + ensemble only; (c)'s are the whole pipeline, whose "
           "decision threshold for the match class maximises the expected macro-F1 on 1,000 unlabelled pairs "
           "(`ensemble.decision`). One training seed. The majority-class baseline always answers no_match."),
    ]
    for name, title in SETS.items():
        s = res.get("sets", {}).get(name)
        if not s:
            continue
        d = s.get("data") or {}
        lines += ["", (f"**{title}** ({d.get('n_crowd_items', '?')} crowd pairs of "
                       f"{d.get('n_train_pairs_available', '?')}, {pct(d.get('train_match_share'))} % matches; "
                       f"{d.get('n_labels', '?')} crowd labels; test {d.get('n_test', '?')} pairs, "
                       f"{pct(d.get('test_match_share'))} % matches; status: {s.get('status')})"), "",
                  ("| pipeline | match F1 % | macro F1 % | accuracy % | majority-class accuracy % | "
                   "majority-class macro F1 % | seconds |"),
                  "|---|---|---|---|---|---|---|"]
        for key, label in PIPELINES:
            v = s.get(key)
            if not v:
                lines.append(f"| {label} | not measured | | | | | |")
                continue
            lines.append(f"| {label} | {pct(v['test_match_f1'])} | {pct(v['test_macro_f1'])} | "
                         f"{pct(v['test_accuracy'])} | {pct(v['test_majority_accuracy'])} | "
                         f"{pct(v['test_majority_macro_f1'])} | {v['seconds']:.0f} |")
        members = (s.get("crowdforge") or {}).get("members") or {}
        if members:
            lines += ["", "(c)'s members on the test split: " + "; ".join(
                f"{k} ({v['strategy']}) accuracy {pct(v['test_accuracy'])} %"
                + (f", macro F1 {pct(v['test_macro_f1'])} %" if v.get("test_macro_f1") is not None else "")
                + f", weight {v['weight']:.2f}" for k, v in members.items()) + "."]
        cr = s.get("crowd") or {}
        if "majority_vote" in cr and "reputation" in cr:
            mv, ds = cr["majority_vote"], cr["reputation"]
            lines += ["", (f"Training labels of the crowd pairs against gold: majority vote accuracy "
                           f"{pct(mv['accuracy'])} %, match F1 {pct(mv['match_f1'])} % "
                           f"(precision {pct(mv['match_precision'])}, recall {pct(mv['match_recall'])}); "
                           f"crowdforge's reputation stage accuracy {pct(ds['accuracy'])} %, match F1 "
                           f"{pct(ds['match_f1'])} % (precision {pct(ds['match_precision'])}, "
                           f"recall {pct(ds['match_recall'])})"
                           + (f"; after finetune's refinement {pct(s['label_accuracy']['refined'])} % accurate"
                              if (s.get("label_accuracy") or {}).get("refined") is not None else "") + ".")]
        if cr.get("quarantined_rows"):
            lines += ["", (f"Validation quarantined {cr['quarantined_rows']} crowd label rows ("
                           + ", ".join(f"{k}: {v}" for k, v in cr.get("quarantined_by_reason", {}).items()) + ")"
                           + (f"; {cr['items_without_any_accepted_label']} pairs lost every label, "
                              f"{cr['match_items_without_any_accepted_label']} of them matches"
                              if "items_without_any_accepted_label" in cr else "") + ".")]
        if "augmented_rows" in cr:
            lines += ["", (f"Augment added {cr['augmented_rows']} rows "
                           f"({', '.join(f'{k}: {v}' for k, v in cr['augmented_rows_by_label'].items())}); "
                           f"{cr['augmented_rows_without_separator']} of them lost the `[SEP]` separator.")]
    lines += ["", "Goals (from the issue):", ""]
    for g in res.get("goals", []):
        verdict = {True: "met", False: "**not met**", None: "not measured"}[g["met"]]
        lines.append(f"- {g['goal']}: {g['value']} -> {verdict}")
    for note in res.get("notes", []):
        lines += ["", note]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default=None,
                    help="comma-separated, of amazon_google,abt_buy (default both; --quick: abt_buy)")
    ap.add_argument("--n-train", default=None,
                    help="train pairs given to the crowd, stratified by label (default 3000; --quick: 300); one number "
                         "for every set or per set, e.g. amazon_google=3000,abt_buy=1500")
    ap.add_argument("--n-train-note", default="",
                    help="why n_train differs from the default (printed in BENCHMARKS.md)")
    ap.add_argument("--n-test", type=int, default=None,
                    help="test pairs, a stratified subsample of the test split (default all; --quick: 300)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 300 train pairs, 300 test pairs, one data set; writes entity_matching_quick.json "
                         "and does not touch BENCHMARKS.md unless --benchmarks is given")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: the machine's 2 cores are shared)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the train/test subsamples and the simulated crowd")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="more params.yaml overrides for (a), (b) and (c), on top of the max_length=128 ones")
    ap.add_argument("--json", type=Path, default=None,
                    help="results file (default .crowdforge/bench/entity_matching.json)")
    ap.add_argument("--benchmarks", type=Path, default=None, help="the BENCHMARKS.md to update (default the project's)")
    ap.add_argument("--work", type=Path, default=None,
                    help="keep the projects in this folder for inspection (default a temporary folder, removed)")
    ap.add_argument("--crowdforge-only", action="store_true",
                    help="run (c) alone, not (a) and (b) (ablations of (c); implies --no-write)")
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    ap.add_argument("--from-json", type=Path, help="only re-render the BENCHMARKS.md section from a saved results file")
    args = ap.parse_args()
    args.no_write = args.no_write or args.crowdforge_only
    bench_dir = ROOT / ".crowdforge" / "bench"
    if args.from_json:
        res = json.loads(args.from_json.read_text())
        res["goals"] = goals(res)
        write_section(SECTION, markdown(res), args.benchmarks or ROOT / "BENCHMARKS.md")
        print(markdown(res))
        return 0
    if args.quick:
        args.sets = args.sets or "abt_buy"
        args.n_train = args.n_train or "300"
        args.n_test = args.n_test or 300
        args.json = args.json or bench_dir / "entity_matching_quick.json"
        write_md = args.benchmarks is not None and not args.no_write
    else:
        args.sets = args.sets or "amazon_google,abt_buy"
        args.n_train = args.n_train or "3000"
        args.json = args.json or bench_dir / "entity_matching.json"
        write_md = not args.no_write
    md_path = args.benchmarks or ROOT / "BENCHMARKS.md"
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    if "=" in args.n_train:
        per = {k.strip(): int(v) for k, _, v in (x.partition("=") for x in args.n_train.split(",") if x.strip())}
        if set(sets) - set(per):
            raise SystemExit(f"--n-train {args.n_train}: no number for {sorted(set(sets) - set(per))}")
        args.n_train_per_set = {k: per[k] for k in sets}
        args.n_train = ", ".join(f"{SETS.get(k, k)} {v}" for k, v in args.n_train_per_set.items())
    else:
        args.n_train_per_set = dict.fromkeys(sets, int(args.n_train))
    unknown = [s for s in sets if s not in SETS]
    if unknown:
        raise SystemExit(f"--sets: unknown {unknown}; choose from {list(SETS)}")
    missing = [s for s in sets if not (DATA / s / "test.csv").exists()]
    if missing:
        print(f"entity_matching: {', '.join(str(DATA / s) for s in missing)} absent; skipping "
              "(the benchmark needs the shared datasets).")
        return 0
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    from crowdforge.runtime import configure_environment, set_torch_threads

    configure_environment()
    set_torch_threads(args.threads)
    overrides = {**DEFAULT_OVERRIDES, **learning.parse_sets(args.set)}
    learning.bench_params(list(CLASSES), args.threads, overrides)  # an unknown key fails here, not after the data
    res: dict[str, Any] = {
        "command": "python bench/entity_matching.py" + ("" if not sys.argv[1:] else " " + " ".join(sys.argv[1:])),
        "date": time.strftime("%Y-%m-%d %H:%M"), "threads": args.threads, "overrides": overrides,
        "machine": {"cores": os.cpu_count(), "memory": "24 GiB", "python": platform.python_version(),
                    "load_start": " ".join(f"{x:.2f}" for x in os.getloadavg())},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "sets": {}, "notes": [], "n_train_note": args.n_train_note,
    }
    t0 = time.perf_counter()
    log(f"entity matching: sets {sets}, n_train {args.n_train} (stratified: the match share is kept), "
        f"n_test {args.n_test or 'all'}, overrides {overrides}; results -> {args.json}")

    def save() -> None:
        res["seconds"] = time.perf_counter() - t0
        res["machine"]["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        res["goals"] = goals(res)
        write_json(res, args.json)

    with tempfile.TemporaryDirectory(prefix="bench-em-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for name in sets:
            try:
                run_set(name, args, work, overrides, res, save)
            except Exception as exc:  # noqa: BLE001 -- one failed set must not lose the other's results
                import traceback

                traceback.print_exc()
                res["sets"].setdefault(name, {})["status"] = "failed"
                res.setdefault("errors", {})[name] = repr(exc)
            save()
    save()
    md = markdown(res)
    if write_md:
        write_section(SECTION, md, md_path)  # re-reads the file right before writing
        log(f"wrote the section '{SECTION[3:]}' of {md_path}")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
