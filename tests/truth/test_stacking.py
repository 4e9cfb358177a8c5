"""The default estimator on degenerate crowds and on correlated errors."""

import numpy as np
import pandas as pd
import pytest

from crowdforge.truth import METHODS, StackedDawidSkene, make_estimator
from crowdforge.truth.aggregate import aggregate
from crowdforge.truth.calibration import expected_calibration_error


def _single_worker(n=600, classes=("a", "b", "c", "d", "e", "f"), seed=0):
    rng = np.random.default_rng(seed)
    # skewed classes, two of them small (the case that used to be merged into a third)
    lab = rng.choice(list(classes), size=n, p=[0.4, 0.3, 0.2, 0.06, 0.03, 0.01])
    return pd.DataFrame({"task": [f"q{i}" for i in range(n)], "worker": "solo", "label": lab})


@pytest.mark.parametrize("method", list(METHODS))
def test_single_worker_is_returned_unchanged(method):
    df = _single_worker()
    res = aggregate(df.astype(str), method=method)
    got = res.items.set_index("item")["label"].reindex(df["task"]).to_numpy()
    assert (got == df["label"].to_numpy()).all()
    if method != "majority_vote":  # a worker who agrees with themselves everywhere looks reliable
        assert res.items["confidence"].mean() > 0.8


def test_every_item_labelled_once_by_many_workers():
    rng = np.random.default_rng(1)
    n = 400
    df = pd.DataFrame({"task": np.arange(n), "worker": rng.integers(0, 40, n), "label": rng.integers(0, 3, n)})
    est = StackedDawidSkene().fit(df)
    assert (est.labels_.reindex(df["task"]).to_numpy() == df["label"].to_numpy()).all()
    assert np.allclose(est.probas_.sum(axis=1), 1)


def test_constant_worker_and_always_disagreeing_pair():
    df_rows = []
    rng = np.random.default_rng(2)
    truth = rng.integers(0, 2, 300)
    for t, y in enumerate(truth):
        for w in range(4):
            df_rows.append((t, f"g{w}", int(y if rng.random() < 0.85 else 1 - y)))
        df_rows.append((t, "lazy", 0))  # the same label for every item
    df = pd.DataFrame(df_rows, columns=["task", "worker", "label"])
    est = StackedDawidSkene().fit(df)
    assert (est.labels_ == pd.Series(truth)).mean() > 0.9
    assert est.worker_accuracy_["lazy"] < est.worker_accuracy_[["g0", "g1", "g2", "g3"]].min()
    # two workers who always disagree: no evidence either way, so no confident answer
    pair = pd.DataFrame({"task": np.repeat(np.arange(50), 2), "worker": ["x", "y"] * 50,
                         "label": np.ravel([[i % 2, 1 - i % 2] for i in range(50)])})
    est = StackedDawidSkene().fit(pair)
    assert est.probas_.max(axis=1).max() < 0.75


def test_unused_class_and_gold_only_class():
    df = pd.DataFrame({"task": np.repeat(np.arange(60), 3).astype(str), "worker": ["a", "b", "c"] * 60,
                       "label": ["x", "x", "y"] * 60})
    est = StackedDawidSkene(classes=["x", "y", "z"]).fit(df)  # z: declared, never used
    assert list(est.probas_.columns) == ["x", "y", "z"] and (est.labels_ == "x").all()
    assert est.probas_["z"].max() < 0.05
    gold = pd.Series({"0": "z", "1": "x"})  # z appears only in the gold
    res = aggregate(df, gold=gold)
    items = res.items.set_index("item")
    assert items.loc["0", "label"] == "z" and items.loc["1", "label"] == "x"
    assert "prob_z" in items.columns and any("only in the gold" in n for n in res.notes)


def test_repeated_pairs_are_kept_and_counted():
    df = pd.DataFrame({"task": ["t1", "t1", "t1", "t2", "t2"], "worker": ["a", "a", "b", "a", "b"],
                       "label": ["x", "x", "y", "y", "y"]})
    res = aggregate(df)
    assert res.model["n_repeated_pairs"] == 1
    assert res.items.set_index("item").loc["t1", "label"] == "x"  # a's two votes both count
    assert res.workers.set_index("worker").loc["a", "n_labels"] == 3


def test_tempering_reduces_overconfidence():
    # errors correlated through item difficulty: hard items fool every worker the same way,
    # which the independence model over-counts; the held-out temperature tempers it
    rng = np.random.default_rng(0)
    n, W = 600, 9
    truth = rng.integers(0, 2, n)
    hard = rng.random(n) < 0.3
    rows = []
    for t in range(n):
        shared_wrong = hard[t] and rng.random() < 0.5
        for w in range(W):
            lab = truth[t] if rng.random() < (0.35 if shared_wrong else 0.8) else 1 - truth[t]
            rows.append((t, w, int(lab)))
    df = pd.DataFrame(rows, columns=["task", "worker", "label"])
    est = StackedDawidSkene().fit(df)
    assert (est.evidence_["temperature"] > 1.0).any()
    raw = make_estimator("dawid_skene").fit(df)
    e_raw = expected_calibration_error(raw.probas_.to_numpy(), truth)
    e_cal = expected_calibration_error(est.probas_.to_numpy(), truth)
    assert e_cal < e_raw
