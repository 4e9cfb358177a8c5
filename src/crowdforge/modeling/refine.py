"""Refining crowd soft labels with the text itself (the classifier as a prior on the truth).

Dawid-Skene's posterior for item ``i`` uses only its crowd labels: ``q_i(c) ∝ pi(c) L_i(c)``
with ``L_i(c) = P(crowd labels of i | true class c)`` and the class prior ``pi``. With three labels
per item and a few adversaries, many items stay wrong or uncertain. The text is a second,
independent piece of evidence: if a classifier gives ``p(c | x_i)`` and the crowd's labels are
independent of the wording given the true class, then

    P(c | x_i, crowd labels) ∝ p(c | x_i) L_i(c) ∝ p(c | x_i) q_i(c) / pi(c).

This is the E-step of Raykar et al. 2010 ("Learning From Crowds", JMLR), where the classifier
replaces the class prior. To keep an item's own (noisy) label from vouching for itself, ``p`` is
*out-of-fold*: a logistic regression on the frozen encoder's cached sentence embeddings, trained
on the other folds (grouped by source item, so augmented copies stay with their original).
Repeating with the refined labels as targets is one more EM round (how much it lifts the training
labels' accuracy is in BENCHMARKS.md, learning).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from crowdforge.progress import track


def out_of_fold_probs(x: np.ndarray, q: np.ndarray, w: np.ndarray, groups: Sequence[str], folds: int,
                      seed: int, c_reg: float = 0.1) -> np.ndarray:
    """``p(c | x_i)`` from a soft-label logistic regression that never saw item ``i``'s group.

    Soft labels are fitted by repeating every row once per class with sample weight ``q_ic w_i``.
    """
    from sklearn.linear_model import LogisticRegression

    n, k = q.shape
    codes = np.unique(np.asarray(groups), return_inverse=True)[1]
    n_groups = int(codes.max()) + 1 if n else 0
    fold_of_group = np.random.default_rng(seed).permutation(n_groups) % max(1, min(folds, n_groups))
    fold = fold_of_group[codes]
    p = np.full((n, k), 1.0 / k)
    for f in np.unique(fold):
        tr, te = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        sw = (q[tr] * w[tr, None]).T.ravel()  # class-major: rows of class 0, then class 1, ...
        if len(tr) == 0 or sw.sum() <= 0:
            continue
        model = LogisticRegression(C=c_reg, max_iter=500)
        model.fit(np.tile(x[tr], (k, 1)), np.repeat(np.arange(k), len(tr)), sample_weight=sw)
        p[np.ix_(te, model.classes_)] = model.predict_proba(x[te])
    return p


def refine_soft_labels(x: np.ndarray, q: np.ndarray, w: np.ndarray, groups: Sequence[str], rounds: int = 2,
                       folds: int = 5, seed: int = 0, tol: float | None = None,
                       trace: list[float] | None = None) -> np.ndarray:
    """EM rounds of ``r_i ∝ p_oof(c | x_i) q_i(c) / pi(c)`` (``pi`` = mean of ``q``).

    ``tol`` None: exactly ``rounds`` rounds, the folds drawn anew each round. ``tol`` given: the folds
    stay the same in every round, so the rounds iterate one map to its fixed point, and they stop
    once a round moves the labels by less than ``tol`` (mean absolute change), ``rounds`` at most.
    ``trace`` (if given) receives each round's mean absolute change.

    Returns ``q`` unchanged when ``rounds`` is 0 or there are fewer than two groups.
    """
    q = np.asarray(q, dtype=np.float64)
    if rounds <= 0 or len(set(groups)) < 2:
        return q
    prior = np.clip(q.mean(0), 1e-6, None)
    likelihood = q / prior  # L_i(c) up to a constant per item
    r = q
    with track(rounds, f"label refinement ({folds} folds per round, at most {rounds} rounds)") as advance:
        for step in range(rounds):
            p = out_of_fold_probs(np.asarray(x, dtype=np.float64), r, np.asarray(w, dtype=np.float64), groups,
                                  folds, seed if tol is not None else seed + step)
            new = p * likelihood
            new = new / np.clip(new.sum(1, keepdims=True), 1e-12, None)
            change = float(np.abs(new - r).mean())
            r = new
            advance()
            if trace is not None:
                trace.append(change)
            if tol is not None and change < tol:
                break
    return r
