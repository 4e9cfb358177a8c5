"""Truth inference on an imbalanced simulated crowd: how well each method finds a rare class.

    python bench/imbalanced_truth.py [--seeds 3] [--items 1500] [--positive 0.1]

The crowd of the learning benchmark (bench/learning.py: 60 contributors, 20 % spammers, 10 %
adversaries, the rest ordinary with accuracy 0.6-0.9, 3 labels per item) on binary items of which
``--positive`` are the rare class (entity matching: about 1 pair in 10 matches). Reports accuracy,
F1 of the rare class and how many items each method labels rare, side by side with crowd-kit's
DawidSkene and MajorityVote; prints a markdown table (no file is written).
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import pandas as pd


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--items", type=int, default=1500)
    ap.add_argument("--positive", type=float, default=0.1)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import crowdkit.aggregation as ck
    from sklearn.metrics import f1_score

    from crowdforge.simulate.crowd import CrowdMix, simulate_crowd
    from crowdforge.truth import make_estimator

    rows = []
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        truth_labels = np.where(rng.random(args.items) < args.positive, "match", "no_match")
        items = pd.DataFrame({"item_id": [f"i{i}" for i in range(args.items)], "text": "-", "label": truth_labels})
        mix = CrowdMix({"spammer": 0.2, "adversary": 0.1, "ordinary": 0.7}, copiers=0)
        labels, _ = simulate_crowd(items, ["match", "no_match"], 60, seed=seed, labels_per_item=3, mix=mix)
        data = labels.rename(columns={"item_id": "task", "contributor_id": "worker"})[["task", "worker", "label"]]
        truth = items.set_index("item_id")["label"]
        methods = {f"cf {m}": (lambda m=m, d=data: make_estimator(m).fit(d).labels_)
                   for m in ("auto", "dawid_skene", "one_coin", "mace", "majority_vote")}
        methods["ck DawidSkene"] = lambda d=data: ck.DawidSkene(n_iter=100).fit_predict(d)
        methods["ck MajorityVote"] = lambda d=data: ck.MajorityVote().fit_predict(d)
        for name, fit in methods.items():
            pred = fit().reindex(truth.index)
            rows.append({"seed": seed, "method": name, "accuracy": float((pred == truth).mean()),
                         "rare_f1": float(f1_score(truth, pred.fillna("no_match"), pos_label="match")),
                         "labelled_rare": int((pred == "match").sum()), "truly_rare": int((truth == "match").sum())})
    df = pd.DataFrame(rows)
    mean = df.groupby("method", sort=False)[["accuracy", "rare_f1", "labelled_rare", "truly_rare"]].mean()
    print(f"{args.seeds} seeds, {args.items} items, {args.positive:.0%} rare, 60 contributors, 3 labels per item\n")
    print("| method | accuracy | F1 of the rare class | items labelled rare | truly rare |")
    print("|---|---|---|---|---|")
    for name, r in mean.iterrows():
        print(f"| {name} | {r['accuracy']:.3f} | {r['rare_f1']:.3f} | {r['labelled_rare']:.0f} "
              f"| {r['truly_rare']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
