"""One-coin, MACE and the stacked default on synthetic crowds with known workers."""

import numpy as np
import pandas as pd
import pytest
from test_dawid_skene import K, acc, make_crowd

from crowdforge.truth import (
    MACE,
    METHODS,
    MajorityVote,
    OneCoinDawidSkene,
    StackedDawidSkene,
    make_estimator,
)
from crowdforge.truth.calibration import expected_calibration_error, fit_temperature_gold


@pytest.mark.parametrize("cls", [OneCoinDawidSkene, MACE, StackedDawidSkene])
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


def test_default_deterministic_gold_and_prior():
    df, truth = make_crowd(n_tasks=200, per_task=3, seed=4, n_good=3, acc=0.6)
    a = StackedDawidSkene().fit(df).probas_
    b = StackedDawidSkene().fit(df.sample(frac=1, random_state=1)).probas_
    pd.testing.assert_frame_equal(a, b)
    gold, rest = truth.iloc[:60], truth.iloc[60:]
    est = StackedDawidSkene().fit(df, gold=gold)
    assert (est.labels_[gold.index] == gold).all()
    assert est.gold_temperature_ >= 1.0 and np.isfinite(est.gold_temperature_gain_)  # gold calibration was checked
    assert acc(est.labels_, rest) >= acc(StackedDawidSkene().fit_predict(df), rest)
    # a track record (counts from a rich first round) carries into a sparse round
    df1, _ = make_crowd(n_tasks=500, per_task=5, seed=2, n_good=3, acc=0.8)
    prior = StackedDawidSkene().fit(df1).counts_
    no, yes = [], []
    for seed in range(3, 6):
        df2, t2 = make_crowd(n_tasks=60, per_task=3, seed=seed, n_good=3, acc=0.8)
        no.append(acc(StackedDawidSkene().fit_predict(df2), t2))
        yes.append(acc(StackedDawidSkene().fit_predict(df2, worker_prior=prior), t2))
    assert np.mean(yes) > np.mean(no) + 0.03


def _class_dependent_crowd(seed=0, n_tasks=600, W=10, per_task=4):
    """Binary crowd whose workers are reliable on class 0 and poor on class 1 (errors depend on the truth)."""
    rng = np.random.default_rng(seed)
    truth = rng.choice(2, size=n_tasks, p=[0.7, 0.3])
    rows = []
    for t in range(n_tasks):
        for w in rng.choice(W, size=per_task, replace=False):
            p_right = 0.95 if truth[t] == 0 else 0.55
            rows.append((t, w, int(truth[t] if rng.random() < p_right else 1 - truth[t])))
    return pd.DataFrame(rows, columns=["task", "worker", "label"]), pd.Series(truth)


def test_evidence_prefers_structure_the_crowd_supports():
    # class-dependent errors: full confusion matrices predict held-out labels better than one coin
    df, truth = _class_dependent_crowd()
    est = StackedDawidSkene().fit(df)
    ev = est.evidence_
    assert ev["heldout_loglik"]["dawid_skene(tau=0)"] > ev["heldout_loglik"]["one_coin"]
    class_dependent = ["mace", "dawid_skene(tau=30)", "dawid_skene(tau=10)", "dawid_skene(tau=3)",
                       "dawid_skene(tau=1)", "dawid_skene(tau=0)"]  # MACE: through each worker's strategy
    assert ev.loc[class_dependent, "weight"].sum() > 0.9
    assert np.isclose(ev["weight"].sum(), 1) and est.chosen_ == ev["weight"].idxmax()
    assert acc(est.labels_, truth) >= acc(OneCoinDawidSkene().fit_predict(df), truth)
    # workers who each label three items: no evidence for per-worker matrices, the simple members win
    df2, _ = make_crowd(n_tasks=300, per_task=3, seed=7)
    df2["worker"] = [f"u{i}" for i in range(len(df2))]  # every label from a new worker
    ev2 = StackedDawidSkene().fit(df2).evidence_
    simple = ev2.loc[["majority", "one_coin", "mace", "dawid_skene(tau=1e+06)"], "weight"].sum()
    assert simple > 0.5


def test_stacking_weights_mix_and_select():
    from crowdforge.truth.stacking import stacking_weights

    rng = np.random.default_rng(0)
    a = rng.uniform(0.1, 1, 2000)
    assert stacking_weights(np.c_[a, a * 0.5])[0] > 0.99  # a dominated member gets ~0
    half = np.r_[np.ones(1000), np.full(1000, 0.01)]
    w = stacking_weights(np.c_[half, half[::-1]])  # each member right on half of the labels: mix
    assert np.allclose(w, [0.5, 0.5], atol=0.02)


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
    assert METHODS["auto"][0] is StackedDawidSkene
    one = pd.DataFrame({"task": ["a"], "worker": ["w"], "label": [1]})
    with pytest.raises(ValueError, match="candidates"):
        StackedDawidSkene(candidates=("nope",)).fit(one)
    with pytest.raises(ValueError, match="unknown truth-inference method"):
        make_estimator("hierarchical")
    est = StackedDawidSkene(classes=[0, 1]).fit(one)  # a single label still gets an answer
    assert est.labels_["a"] == 1 and 0.5 < est.probas_.loc["a", 1] <= 1.0
    # one contract: every registered method takes gold and worker_prior and has the same attributes
    df, truth = make_crowd(n_tasks=80, per_task=3, seed=1)
    gold = truth.iloc[:10]
    for name in METHODS:
        est = make_estimator(name, n_iter=50, shrinkage=2.0).fit(df, gold=gold, worker_prior=None)
        assert (est.labels_[gold.index] == gold).all(), name
        for attr in ("probas_", "labels_", "priors_", "errors_", "counts_", "worker_accuracy_",
                     "worker_accuracy_sd_", "worker_n_labels_"):
            assert getattr(est, attr) is not None, (name, attr)
        assert est.worker_accuracy_.between(0, 1).all() and np.allclose(est.probas_.sum(axis=1), 1)


def test_row_helpers_match_numpy():
    from crowdforge.truth.base import col_sum, row_max, row_sum

    x = np.random.default_rng(0).normal(size=(1000, 5))
    assert np.array_equal(row_max(x), x.max(axis=1))
    assert np.allclose(row_sum(x), x.sum(axis=1)) and np.allclose(col_sum(x), x.sum(axis=0))


def test_default_large_crowd_mode():
    """Above max_selection_labels: the evidence comes from a seeded sample of items; answers nearly the same."""
    df, truth = make_crowd(n_tasks=300)
    full = StackedDawidSkene().fit(df)
    large = StackedDawidSkene(max_selection_labels=600, enough_heldout_labels=100).fit(df)
    assert 0 < large.n_selection_labels_ < len(df) == full.n_selection_labels_
    assert np.allclose(large.probas_.sum(axis=1), 1)
    assert abs(acc(large.labels_, truth) - acc(full.labels_, truth)) <= 0.02
    again = StackedDawidSkene(max_selection_labels=600, enough_heldout_labels=100).fit(df)
    assert again.probas_.equals(large.probas_)
