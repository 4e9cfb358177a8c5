"""One-coin, MACE and the hierarchical default on synthetic crowds with known workers."""

import numpy as np
import pandas as pd
import pytest
from test_dawid_skene import K, acc, make_crowd

from crowdforge.truth import MACE, METHODS, HierarchicalDawidSkene, MajorityVote, OneCoinDawidSkene
from crowdforge.truth.calibration import expected_calibration_error, fit_temperature_gold


@pytest.mark.parametrize("cls", [OneCoinDawidSkene, MACE, HierarchicalDawidSkene])
def test_beats_majority_vote_and_ranks_bad_workers(cls):
    df, truth = make_crowd(n_tasks=300)
    est = cls().fit(df)
    assert acc(est.labels_, truth) > acc(MajorityVote().fit_predict(df), truth) + 0.02
    assert est.probas_.shape == (300, K) and np.allclose(est.probas_.sum(axis=1), 1)
    worst = set(est.worker_accuracy_.nsmallest(4).index)
    assert worst == {"w8", "w9", "w10", "w11"}  # spammers and adversaries
    assert (est.worker_accuracy_sd_ > 0).all()
    assert np.allclose(est.errors_.groupby(level="worker").sum().to_numpy(), 1)


def test_one_coin_and_mace_structure():
    df, _ = make_crowd(n_tasks=200)
    oc = OneCoinDawidSkene().fit(df)
    block = oc.errors_.xs("w0", level="worker").to_numpy()  # rows observed, cols true
    off = block[~np.eye(K, dtype=bool)]
    assert np.allclose(off, off[0])  # every error equally likely
    mace = MACE().fit(df)
    # spammers spam, good workers mostly do not
    assert mace.spam_prob_[["w8", "w9"]].min() > mace.spam_prob_[[f"w{i}" for i in range(8)]].max()
    assert np.allclose(mace.strategy_.sum(axis=1), 1)


def test_hierarchical_deterministic_gold_and_prior():
    df, truth = make_crowd(n_tasks=200, per_task=3, seed=4, n_good=3, acc=0.6)
    a = HierarchicalDawidSkene().fit(df).probas_
    b = HierarchicalDawidSkene().fit(df.sample(frac=1, random_state=1)).probas_
    pd.testing.assert_frame_equal(a, b)
    gold, rest = truth.iloc[:60], truth.iloc[60:]
    est = HierarchicalDawidSkene().fit(df, gold=gold)
    assert (est.labels_[gold.index] == gold).all()
    assert est.gold_temperature_ >= 1.0  # 60 gold items >= min_gold_for_calibration: gold calibration ran
    assert acc(est.labels_, rest) >= acc(HierarchicalDawidSkene().fit_predict(df), rest)
    # a track record (counts from a rich first round) carries into a sparse round
    df1, _ = make_crowd(n_tasks=500, per_task=5, seed=2, n_good=3, acc=0.8)
    prior = HierarchicalDawidSkene().fit(df1).counts_
    no, yes = [], []
    for seed in range(3, 6):
        df2, t2 = make_crowd(n_tasks=60, per_task=3, seed=seed, n_good=3, acc=0.8)
        no.append(acc(HierarchicalDawidSkene().fit_predict(df2), t2))
        yes.append(acc(HierarchicalDawidSkene().fit_predict(df2, worker_prior=prior), t2))
    assert np.mean(yes) > np.mean(no) + 0.03


def test_tempering_reduces_overconfidence():
    # workers whose errors are correlated through item difficulty: half the items are hard and
    # fool every worker the same way, which the independence model over-counts
    rng = np.random.default_rng(0)
    n, W = 600, 9
    truth = rng.integers(0, 2, n)
    hard = rng.random(n) < 0.3
    rows = []
    for t in range(n):
        shared_wrong = hard[t] and rng.random() < 0.5
        for w in range(W):
            p_ok = 0.35 if shared_wrong else 0.8
            lab = truth[t] if rng.random() < p_ok else 1 - truth[t]
            rows.append((t, w, int(lab)))
    df = pd.DataFrame(rows, columns=["task", "worker", "label"])
    y = pd.Series(truth)
    raw = HierarchicalDawidSkene(calibration="none").fit(df)
    cal = HierarchicalDawidSkene(calibration="labels").fit(df)
    assert (cal.temperature_ > 1.0).all()
    e_raw = expected_calibration_error(raw.probas_.to_numpy(), y.to_numpy())
    e_cal = expected_calibration_error(cal.probas_.to_numpy(), y.to_numpy())
    assert e_cal < e_raw


def test_calibration_helpers():
    rng = np.random.default_rng(1)
    p = rng.uniform(0.5, 1.0, 5000)
    y = (rng.random(5000) > p).astype(int)  # class 0 is right with probability p: calibrated
    P = np.c_[p, 1 - p]
    assert expected_calibration_error(P, y) < 0.02
    assert expected_calibration_error(np.c_[np.ones(5000), np.zeros(5000)], y) > 0.2
    # over-confident logits (x3) -> the gold temperature finds about 3
    logit = np.log(P)
    s = fit_temperature_gold(3 * logit, np.zeros(2), y)
    assert 2.5 < s < 3.5


def test_methods_registry_and_bad_params():
    assert METHODS["auto"] is HierarchicalDawidSkene
    one = pd.DataFrame({"task": ["a"], "worker": ["w"], "label": [1]})
    with pytest.raises(ValueError, match="calibration"):
        HierarchicalDawidSkene(calibration="platt").fit(one)
    with pytest.raises(ValueError, match="shrinkages"):
        HierarchicalDawidSkene(shrinkages=()).fit(one)
    est = HierarchicalDawidSkene(classes=[0, 1]).fit(one)  # a single label still gets an answer
    assert est.labels_["a"] == 1 and 0.5 < est.probas_.loc["a", 1] <= 1.0


def test_row_helpers_match_numpy():
    from crowdforge.truth.base import col_sum, row_max, row_sum

    x = np.random.default_rng(0).normal(size=(1000, 5))
    assert np.array_equal(row_max(x), x.max(axis=1))
    assert np.allclose(row_sum(x), x.sum(axis=1)) and np.allclose(col_sum(x), x.sum(axis=0))


def test_hierarchical_large_crowd_mode():
    """Above large_crowd_labels: the coarse grid and a calibration sample; same answers, nearly."""
    df, truth = make_crowd(n_tasks=300)
    full = HierarchicalDawidSkene(large_crowd_labels=None).fit(df)
    large = HierarchicalDawidSkene(large_crowd_labels=100, large_crowd_calibration_labels=500).fit(df)
    assert list(full.temperature_.index) == sorted(HierarchicalDawidSkene().shrinkages)
    assert list(large.temperature_.index) == [3.0, 30.0, 300.0, 1e6]
    assert (large.temperature_ >= 1).all() and np.allclose(large.probas_.sum(axis=1), 1)
    assert abs(acc(large.labels_, truth) - acc(full.labels_, truth)) <= 0.02
    again = HierarchicalDawidSkene(large_crowd_labels=100, large_crowd_calibration_labels=500).fit(df)
    assert again.probas_.equals(large.probas_)  # the sample is seeded
