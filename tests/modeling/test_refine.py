from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from crowdforge.modeling.refine import (
    CrowdLabels,
    choose_shrinkage,
    confusion_counts,
    crowd_labels,
    item_log_likelihood,
    out_of_fold_probs,
    refine_soft_labels,
    worker_confusions,
)


def _crowd(n: int = 600, seed: int = 0):
    """Texts as 8-d embeddings that carry the class; crowd posteriors right for 75 % of items."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(0, 1, (n, 8)) + 2.0 * (2 * y - 1)[:, None] * np.eye(8)[0]
    wrong = rng.random(n) < 0.25
    label = np.where(wrong, 1 - y, y)
    conf = rng.uniform(0.55, 0.95, n)
    q = np.stack([np.where(label == 0, conf, 1 - conf), np.where(label == 1, conf, 1 - conf)], 1)
    return x, q, y


def test_refinement_fixes_crowd_errors_the_text_contradicts() -> None:
    x, q, y = _crowd()
    groups = [f"i{i}" for i in range(len(y))]
    r = refine_soft_labels(x, q, np.ones(len(y)), groups, rounds=2, folds=5, seed=0)
    assert r.shape == q.shape and np.allclose(r.sum(1), 1)
    assert (r.argmax(1) == y).mean() > (q.argmax(1) == y).mean() + 0.05


def test_zero_rounds_or_one_group_is_the_identity() -> None:
    x, q, _ = _crowd(40)
    np.testing.assert_array_equal(refine_soft_labels(x, q, np.ones(40), [f"i{i}" for i in range(40)], rounds=0), q)
    np.testing.assert_array_equal(refine_soft_labels(x, q, np.ones(40), ["same"] * 40, rounds=2), q)


def test_an_items_own_label_never_reaches_its_prediction() -> None:
    """Out-of-fold: flipping item 0's soft label (and its augmented copy's: same group) leaves p[0] alone."""
    x, q, y = _crowd(200)
    groups = ["g0", *[f"i{i}" for i in range(1, 199)], "g0"]
    p = out_of_fold_probs(x, q, np.ones(200), groups, folds=4, seed=1)
    q2 = q.copy()
    q2[[0, 199]] = q2[[0, 199], ::-1]
    p2 = out_of_fold_probs(x, q2, np.ones(200), groups, folds=4, seed=1)
    np.testing.assert_allclose(p2[[0, 199]], p[[0, 199]])
    assert not np.allclose(p2, p)  # other folds did learn from it
    assert (p.argmax(1) == y).mean() == pytest.approx(1.0, abs=0.2)


def test_rounds_run_to_convergence_and_stop_there() -> None:
    x, q, y = _crowd()
    groups = [f"i{i}" for i in range(len(y))]
    trace: list[float] = []
    r = refine_soft_labels(x, q, np.ones(len(y)), groups, rounds=50, folds=5, seed=0, tol=1e-3, trace=trace)
    assert 2 <= len(trace) < 50 and trace[-1] < 1e-3 <= trace[-2]  # stopped at the first settled round
    assert all(b < a for a, b in itertools.pairwise(trace))  # one fixed map: each round moves the labels less
    two = refine_soft_labels(x, q, np.ones(len(y)), groups, rounds=2, folds=5, seed=0)
    assert (r.argmax(1) == y).mean() >= (two.argmax(1) == y).mean()


def test_small_loss_weights_separate_labels_the_text_contradicts() -> None:
    from crowdforge.modeling.refine import small_loss_weights

    x, q, y = _crowd()
    groups = [f"i{i}" for i in range(len(y))]
    oof: list[np.ndarray] = []
    r = refine_soft_labels(x, q, np.ones(len(y)), groups, rounds=2, folds=5, seed=0, oof=oof)
    assert len(oof) == 1 and oof[0].shape == q.shape
    clean = small_loss_weights(oof[0], r)
    right = r.argmax(1) == y
    assert clean.shape == (len(y),) and ((clean >= 0) & (clean <= 1)).all()
    assert clean[right].mean() > clean[~right].mean() + 0.3  # wrong labels are weighted down


def test_small_loss_weights_leave_tiny_or_uniform_data_alone() -> None:
    from crowdforge.modeling.refine import small_loss_weights

    p = np.full((50, 2), 0.5)
    np.testing.assert_array_equal(small_loss_weights(p, np.eye(2)[np.arange(50) % 2]), np.ones(50))
    np.testing.assert_array_equal(small_loss_weights(p[:5], np.eye(2)[np.arange(5) % 2]), np.ones(5))


def test_regularisation_is_chosen_by_the_crowds_held_out_likelihood() -> None:
    from crowdforge.modeling.refine import C_GRID, choose_regularisation, crowd_log_likelihood

    x, q, _ = _crowd()
    groups = [f"i{i}" for i in range(len(q))]
    c, scores = choose_regularisation(x, q, np.ones(len(q)), groups, folds=5, seed=0)
    assert set(scores) == set(C_GRID) and scores[c] == max(scores.values())
    assert c > min(C_GRID)  # the text carries the class: a weakly regularised model explains the labels better
    # 300 features that say nothing about the class: the less regularised, the more it overfits
    noise = np.random.default_rng(1).normal(0, 1, (len(q), 300))
    c_noise, noise_scores = choose_regularisation(noise, q, np.ones(len(q)), groups, folds=5, seed=0)
    assert c_noise == min(C_GRID) and max(noise_scores.values()) < scores[c]
    # a classifier that knows nothing (the prior) scores 0; one that agrees with the labels scores above
    assert crowd_log_likelihood(np.tile(q.mean(0), (len(q), 1)), q) == pytest.approx(0.0, abs=1e-9)
    assert crowd_log_likelihood(q, q) > 0


def _adversarial_crowd(n: int = 800, seed: int = 0):
    """A rare class (15 %), 30 contributors (a fifth of them adversaries who answer the other class
    80 % of the time), 3 labels per item, and soft labels from a crowd model that trusts everyone
    alike: the kind of posterior that re-estimating the contributors can correct."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.15).astype(int)
    x = rng.normal(0, 1, (n, 8)) + 1.5 * (2 * y - 1)[:, None] * np.eye(8)[0]
    accuracy = np.where(np.arange(30) < 6, 0.2, rng.uniform(0.7, 0.9, 30))
    item = np.repeat(np.arange(n), 3)
    worker = np.concatenate([rng.choice(30, 3, replace=False) for _ in range(n)])
    label = np.where(rng.random(3 * n) < accuracy[worker], y[item], 1 - y[item])
    votes = np.zeros((n, 2))
    np.add.at(votes, (item, label), 1.0)
    log_q = np.log([0.85, 0.15]) + votes * np.log(0.7) + votes[:, ::-1] * np.log(0.3)
    q = np.exp(log_q - log_q.max(1, keepdims=True))
    return x, q / q.sum(1, keepdims=True), y, CrowdLabels(item, worker, label, np.full(3 * n, -1))


def test_re_estimating_contributors_finds_the_adversaries_a_naive_crowd_model_trusted() -> None:
    x, q, y, crowd = _adversarial_crowd()
    groups = [f"i{i:04d}" for i in range(len(y))]  # sorted: the crowd's item codes index them
    w = np.ones(len(y))
    kept = refine_soft_labels(x, q, w, groups, rounds=20, folds=5, seed=0, tol=1e-3)
    moved = refine_soft_labels(x, q, w, groups, rounds=20, folds=5, seed=0, tol=1e-3, crowd=crowd)
    assert (moved.argmax(1) != y).sum() < 0.75 * (kept.argmax(1) != y).sum()  # a quarter of the errors gone
    pi = worker_confusions(crowd, moved, shrinkage=0.0)
    assert (np.diagonal(pi[:6], axis1=1, axis2=2).mean(1) < 0.5).all()  # the adversaries are seen as such
    assert (np.diagonal(pi[6:], axis1=1, axis2=2).mean(1) > 0.5).all()


def test_crowd_labels_keep_training_items_and_gold_checks_only() -> None:
    labels = pd.DataFrame({"contributor_id": ["a", "b", "a", "b", "c"],
                           "item_id": ["t2", "t1", "chk", "test9", "t2"],
                           "label": ["pos", "neg", "neg", "pos", "pos"]})
    crowd = crowd_labels(labels, ["t2", "t1", "t2"], ["neg", "pos"], {"chk": "pos"})
    assert crowd.item.tolist() == [1, 0, -1, 1]  # t1 -> 0, t2 -> 1 (sorted); the test item's label is gone
    assert crowd.truth.tolist() == [-1, -1, 1, -1] and crowd.label.tolist() == [1, 0, 0, 1]
    # contributor a called the gold check (truly pos) neg: its confusion says so
    counts = confusion_counts(crowd, np.array([[0.9, 0.1], [0.2, 0.8]]))
    assert counts[0, 1].tolist() == pytest.approx([1.0, 0.8])
    log_l = item_log_likelihood(crowd, np.full((3, 2, 2), 0.5), 2)
    assert log_l.shape == (2, 2) and log_l[1].tolist() == pytest.approx([2 * np.log(0.5)] * 2)


def _three_class_crowd(class_dependent: bool, n: int = 600, seed: int = 0):
    """40 contributors, 4 labels per item, 3 classes. One-coin: each errs with its own rate, evenly
    over the other classes. Class-dependent: each is right except on one class of its own, which it
    calls the next class 70 % of the time."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    item = np.repeat(np.arange(n), 4)
    worker = np.concatenate([rng.choice(40, 4, replace=False) for _ in range(n)])
    truth = y[item]
    if class_dependent:
        flip = (truth == worker % 3) & (rng.random(len(item)) < 0.7)
        label = np.where(flip, (truth + 1) % 3, truth)
    else:
        err = rng.random(len(item)) < rng.uniform(0.1, 0.4, 40)[worker]
        label = np.where(err, (truth + rng.integers(1, 3, len(item))) % 3, truth)
    r_items = 0.9 * np.eye(3)[y] + 0.1 / 3
    return CrowdLabels(item, worker, label, np.full(len(item), -1)), r_items, np.full((n, 3), 1 / 3)


def test_held_out_labels_choose_one_accuracy_per_contributor_or_a_free_matrix_as_the_crowd_needs() -> None:
    one_coin, dependent = _three_class_crowd(False), _three_class_crowd(True)
    tau_one, scores_one = choose_shrinkage(*one_coin)
    tau_dep, scores_dep = choose_shrinkage(*dependent)
    assert tau_one >= 30 and tau_dep <= 3
    assert scores_one[tau_one] > scores_one[0.0] and scores_dep[tau_dep] > scores_dep[1e6]
