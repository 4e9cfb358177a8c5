"""Benchmark on the real crowds in ../shared/datasets (skipped when the data are absent)."""

from pathlib import Path

import pandas as pd
import pytest

from crowdforge.truth import DawidSkene, MajorityVote

ROOT = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "truth_inference"
# crowd-kit 1.4.2 DawidSkene(n_iter=100), from ../shared/datasets/README.md
CROWDKIT_DS = {"rte": 0.928, "d_sentiment": 0.960, "CF_amt": 0.840, "ZenCrowd_in": 0.761}


@pytest.mark.parametrize("name", sorted(CROWDKIT_DS))
def test_not_worse_than_crowdkit_ds(name):
    folder = ROOT / name
    if not (folder / "label.csv").exists():
        pytest.skip(f"benchmark data absent: {folder}")
    labels = pd.read_csv(folder / "label.csv").rename(columns={"item": "task"})
    truth = pd.read_csv(folder / "truth.csv").set_index("item")["truth"]
    pred = DawidSkene().fit_predict(labels).reindex(truth.index)
    mv = MajorityVote().fit_predict(labels).reindex(truth.index)
    ours = float((pred == truth).mean())
    assert ours >= CROWDKIT_DS[name] - 0.005
    assert ours >= float((mv == truth).mean()) - 0.005


# best crowd-kit 1.4.2 method per crowd (../shared/datasets/README.md): the default must be within 1 pt.
# Not here: ZenCrowd_in (best: one-coin .789; the default .762, since its labels favour full confusion
# matrices, which the truth does not) and CF (.877 vs MACE .890): BENCHMARKS.md, truth inference.
CROWDKIT_BEST = {"CF_amt": 0.867, "MS": 0.799, "rte": 0.928, "dog": 0.843, "s4_Face_Sentiment_Identification": 0.640}


@pytest.mark.parametrize("name", sorted(CROWDKIT_BEST))
def test_default_within_a_point_of_best_crowdkit(name):
    from crowdforge.truth import StackedDawidSkene

    folder = ROOT / name
    if not (folder / "label.csv").exists():
        pytest.skip(f"benchmark data absent: {folder}")
    labels = pd.read_csv(folder / "label.csv").rename(columns={"item": "task"})
    truth = pd.read_csv(folder / "truth.csv").set_index("item")["truth"]
    pred = StackedDawidSkene().fit_predict(labels).reindex(truth.index)
    assert float((pred == truth).mean()) >= CROWDKIT_BEST[name] - 0.0105  # the table rounds to 3 decimals
