"""DawidSkene on synthetic crowds whose workers have known confusion matrices."""

import numpy as np
import pandas as pd
import pytest

from crowdforge.truth import DawidSkene, MajorityVote

K = 3


def _confusions(n_good: int, acc: float = 0.75):
    good = np.full((K, K), (1 - acc) / (K - 1)) + np.eye(K) * (acc - (1 - acc) / (K - 1))
    spammer = np.full((K, K), 1.0 / K)
    adversary = np.array([[0.1, 0.1, 0.8], [0.8, 0.1, 0.1], [0.1, 0.8, 0.1]])  # rotates classes
    biased = np.tile([0.05, 0.05, 0.9], (K, 1))
    return [good] * n_good + [spammer, spammer, adversary, adversary, biased]


def make_crowd(n_tasks=400, per_task=5, seed=0, n_good=8, acc=0.75):
    rng = np.random.default_rng(seed)
    conf = _confusions(n_good, acc)
    truth = rng.choice(K, size=n_tasks, p=[0.3, 0.3, 0.4])
    rows = []
    for t in range(n_tasks):
        for w in rng.choice(len(conf), size=per_task, replace=False):
            rows.append((f"t{t}", f"w{w}", int(rng.choice(K, p=conf[w][truth[t]]))))
    df = pd.DataFrame(rows, columns=["task", "worker", "label"])
    return df, pd.Series(truth, index=[f"t{t}" for t in range(n_tasks)])


def acc(pred, truth):
    return float((pred.reindex(truth.index) == truth).mean())


def test_ds_beats_mv_and_finds_bad_workers():
    df, truth = make_crowd()
    ds = DawidSkene().fit(df)
    mv = MajorityVote().fit(df)
    assert acc(ds.labels_, truth) > acc(mv.labels_, truth) + 0.03
    # the adversaries (w10, w11) and spammers (w8, w9) are the least accurate workers
    worst = set(ds.worker_accuracy_.nsmallest(4).index)
    assert worst == {"w8", "w9", "w10", "w11"}
    assert ds.worker_accuracy_[["w10", "w11"]].max() < ds.worker_accuracy_[["w8", "w9"]].min()
    # shapes and layouts follow crowd-kit
    assert ds.probas_.shape == (400, K) and np.allclose(ds.probas_.sum(axis=1), 1)
    assert ds.errors_.index.names == ["worker", "label"]
    assert np.allclose(ds.errors_.groupby(level="worker").sum().to_numpy(), 1)
    assert ds.priors_.sum() == pytest.approx(1)
    assert (ds.worker_accuracy_sd_ > 0).all()
    assert ds.counts_.to_numpy().sum() == pytest.approx(len(df))


def test_deterministic_and_order_invariant():
    df, _ = make_crowd(n_tasks=150)
    a = DawidSkene().fit(df).probas_
    b = DawidSkene().fit(df.sample(frac=1, random_state=3)).probas_
    pd.testing.assert_frame_equal(a, b)


def test_gold_clamping_raises_accuracy():
    # a crowd where the bad workers outnumber the good ones: unanchored EM can settle on a
    # permuted solution; 90 known answers pin the classes down
    plain, clamped = [], []
    for seed in range(3):
        df, truth = make_crowd(n_tasks=300, per_task=3, seed=seed, n_good=3, acc=0.6)
        gold, rest = truth.iloc[:90], truth.iloc[90:]
        plain.append(acc(DawidSkene().fit_predict(df), rest))
        ds = DawidSkene().fit(df, gold=gold)
        assert (ds.labels_[gold.index] == gold).all()
        clamped.append(acc(ds.labels_, rest))
    assert np.mean(clamped) > np.mean(plain) + 0.1
    with pytest.raises(ValueError, match="gold label"):
        DawidSkene().fit(df, gold=pd.Series({"t0": 7}))


def test_worker_prior_helps_sparse_round():
    # round 1: plenty of labels -> confusion counts; round 2: 1 label per worker per few tasks
    df1, _ = make_crowd(n_tasks=500, per_task=5, seed=2, n_good=3, acc=0.8)
    prior = DawidSkene().fit(df1).counts_
    scores_no, scores_with = [], []
    for seed in range(3, 6):
        df2, truth2 = make_crowd(n_tasks=60, per_task=3, seed=seed, n_good=3, acc=0.8)
        scores_no.append(acc(DawidSkene().fit_predict(df2), truth2))
        scores_with.append(acc(DawidSkene().fit_predict(df2, worker_prior=prior), truth2))
    assert np.mean(scores_with) > np.mean(scores_no) + 0.03


def test_degenerate_inputs():
    one = pd.DataFrame({"task": ["a"], "worker": ["w"], "label": [1]})
    ds = DawidSkene(classes=[0, 1]).fit(one)
    assert ds.labels_["a"] == 1
    constant = pd.DataFrame({"task": list("abcdef") * 2, "worker": ["lazy"] * 6 + ["ok"] * 6,
                             "label": [0] * 6 + [0, 1, 0, 1, 0, 1]})
    ds = DawidSkene().fit(constant)
    assert np.isfinite(ds.probas_.to_numpy()).all()
    assert np.isfinite(ds.worker_accuracy_.to_numpy()).all()
    with pytest.raises(ValueError, match="empty"):
        DawidSkene().fit(one.iloc[0:0])
    with pytest.raises(ValueError, match="not among the classes"):
        DawidSkene(classes=[0, 1]).fit(one.assign(label=5))
    with pytest.raises(ValueError, match="missing task"):
        DawidSkene().fit(one.assign(label=[None]))
    with pytest.raises(ValueError, match="shrink_target"):
        DawidSkene(shrink_target="x").fit(one)
