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

With the crowd's own labels (:class:`CrowdLabels`) the refinement is Raykar et al.'s whole EM: each
round also re-estimates every contributor's confusion matrix from the refined labels (the M-step,
Dawid & Skene 1979, with the gold checks' expert labels as known truths) and recomputes ``L_i`` from
them. The reputation stage estimated those matrices with only the crowd as evidence; on a rare
class, where a contributor has labelled a handful of its items, the text's evidence corrects them
(BENCHMARKS.md, label refinement). The M-step is the reputation stage's MAP estimate, shrunk toward
each contributor's one-coin matrix (:func:`crowdforge.truth.dawid_skene.shrunk_confusions`); how
strongly differs from crowd to crowd (a free matrix per contributor on a five-class real crowd, one
accuracy each on a two-class one), so every round picks the strength whose matrices predict
held-out labels best (:func:`choose_shrinkage`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

from crowdforge.progress import track
from crowdforge.truth.calibration import softmax_rows
from crowdforge.truth.dawid_skene import SHRINKAGE_GRID, shrunk_confusions


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


C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)  # inverse regularisation strengths tried by ``choose_regularisation``


def crowd_log_likelihood(p: np.ndarray, q: np.ndarray) -> float:
    """Mean ``log sum_c p(c | x_i) q_i(c) / pi(c)``: the log-likelihood of each item's crowd labels
    under the classifier ``p`` as the prior on its truth, up to a constant per item that does not
    depend on ``p`` (``L_i(c) ∝ q_i(c) / pi(c)``, module docstring). It is the objective the EM of
    Raykar et al. maximises; with out-of-fold ``p`` it is a held-out likelihood."""
    prior = np.clip(q.mean(0), 1e-6, None)
    return float(np.log(np.clip((p * q / prior).sum(1), 1e-300, None)).mean())


def choose_regularisation(x: np.ndarray, q: np.ndarray, w: np.ndarray, groups: Sequence[str], folds: int,
                          seed: int, grid: Sequence[float] = C_GRID) -> tuple[float, dict[float, float]]:
    """The logistic regression's ``C`` (from ``grid``) whose out-of-fold probabilities give the crowd's
    labels the highest likelihood (:func:`crowd_log_likelihood`), and that likelihood for every ``C``.

    How much the text can say depends on the task and the features (a pair's similarities support a
    weakly regularised model, a sentence embedding of a few thousand items a strong one), so the
    strength is chosen per data set by held-out evidence rather than fixed."""
    scores = {float(c): crowd_log_likelihood(out_of_fold_probs(x, q, w, groups, folds, seed, c_reg=c), q)
              for c in grid}
    return max(scores, key=lambda c: scores[c]), scores


class CrowdLabels(NamedTuple):
    """The crowd's labels of the refined items, as codes: label ``j`` says contributor ``worker[j]``
    gave class ``label[j]`` to item ``item[j]`` (an index into the refined items' groups), or, with
    ``item[j] == -1``, to an item outside them whose expert label ``truth[j]`` is known (a gold check)."""

    item: np.ndarray
    worker: np.ndarray
    label: np.ndarray
    truth: np.ndarray


def crowd_labels(labels: pd.DataFrame, groups: Sequence[str], classes: Sequence[str],
                 checks: Mapping[str, str]) -> CrowdLabels:
    """:class:`CrowdLabels` from a frame of ``contributor_id, item_id, label`` rows: the rows on the
    refined ``groups`` (item ids) and on gold ``checks`` (item id -> expert label); other rows (gold
    test items among them) are left out."""
    index = {g: i for i, g in enumerate(np.unique(np.asarray(groups, dtype=str)))}
    cls = {c: i for i, c in enumerate(classes)}
    df = labels.astype({"item_id": str, "label": str, "contributor_id": str})
    df = df[(df["item_id"].isin(index) | df["item_id"].isin(checks)) & df["label"].isin(cls)]
    item = df["item_id"].map(index).fillna(-1).astype(int).to_numpy()
    truth = df["item_id"].map(checks).map(cls).fillna(-1).astype(int).to_numpy()
    return CrowdLabels(item, np.unique(df["contributor_id"].to_numpy(), return_inverse=True)[1].astype(int),
                       df["label"].map(cls).to_numpy(dtype=int), np.where(item >= 0, -1, truth))


def confusion_counts(crowd: CrowdLabels, r_items: np.ndarray, n_workers: int | None = None) -> np.ndarray:
    """Expected counts ``[w, true, given]`` of each contributor's labels, from the soft truth ``r_items``
    of the refined items and the known truth of gold checks."""
    k = r_items.shape[1]
    if n_workers is None:
        n_workers = int(crowd.worker.max()) + 1 if len(crowd.worker) else 0
    known = crowd.item < 0
    truth = np.where(known[:, None], np.eye(k)[np.clip(crowd.truth, 0, k - 1)], r_items[np.clip(crowd.item, 0, None)])
    counts = np.zeros((n_workers, k, k))
    np.add.at(counts, (crowd.worker, slice(None), crowd.label), truth)
    return counts


def worker_confusions(crowd: CrowdLabels, r_items: np.ndarray, shrinkage: float, smoothing: float = 1.0,
                      n_workers: int | None = None) -> np.ndarray:
    """``pi[w, true, given]``: each contributor's confusion matrix from :func:`confusion_counts`, the
    MAP estimate under the reputation stage's prior (``shrinkage`` toward the one-coin matrix, then
    ``smoothing`` per row)."""
    return shrunk_confusions(confusion_counts(crowd, r_items, n_workers), smoothing, shrinkage)


def held_out_label_log_likelihood(crowd: CrowdLabels, r_items: np.ndarray, p_items: np.ndarray, shrinkage: float,
                                  smoothing: float = 1.0, folds: int = 5, seed: int = 0) -> float:
    """Mean log-probability of each label of a held-out item, from confusion matrices estimated on the
    other folds' items (and every gold check) and the item's truth as the out-of-fold classifier
    ``p_items`` and the item's *other* labels give it: ``log sum_c post_-j(c) pi[w_j, c, l_j]`` with
    ``post_-j ∝ p(c | x_i) prod_{j' != j} pi[w_j', c, l_j']``. Neither the label nor its item's fold
    enters its own prediction, so stronger and weaker shrinkage compete on equal terms."""
    n = len(r_items)
    n_workers = int(crowd.worker.max()) + 1 if len(crowd.worker) else 0
    fold = np.random.default_rng(seed).permutation(n) % max(1, min(folds, n))
    total, count = 0.0, 0
    for f in np.unique(fold):
        out = (crowd.item >= 0) & (fold[np.clip(crowd.item, 0, None)] == f)
        if not out.any():
            continue
        pi = worker_confusions(CrowdLabels(*(a[~out] for a in crowd)), r_items, shrinkage, smoothing, n_workers)
        held = CrowdLabels(*(a[out] for a in crowd))
        lik = pi[held.worker, :, held.label]  # (labels, k)
        post = softmax_rows(np.log(np.clip(p_items[held.item], 1e-300, None))
                            + item_log_likelihood(held, pi, n)[held.item] - np.log(lik))
        total += float(np.log((post * lik).sum(1)).sum())
        count += int(out.sum())
    return total / max(count, 1)


def choose_shrinkage(crowd: CrowdLabels, r_items: np.ndarray, p_items: np.ndarray, smoothing: float = 1.0,
                     folds: int = 5, seed: int = 0,
                     grid: Sequence[float] = SHRINKAGE_GRID) -> tuple[float, dict[float, float]]:
    """The shrinkage (from ``grid``) under which held-out labels are most probable
    (:func:`held_out_label_log_likelihood`), and that log-likelihood for every strength tried."""
    scores = {float(t): held_out_label_log_likelihood(crowd, r_items, p_items, t, smoothing, folds, seed) for t in grid}
    return max(scores, key=lambda t: scores[t]), scores


def item_log_likelihood(crowd: CrowdLabels, pi: np.ndarray, n_items: int) -> np.ndarray:
    """``log L_i(c) = sum over item i's labels of log pi[w, c, given]`` (labels independent given the truth)."""
    out = np.zeros((n_items, pi.shape[1]))
    mine = crowd.item >= 0
    np.add.at(out, crowd.item[mine], np.log(pi[crowd.worker[mine], :, crowd.label[mine]]))
    return out


def group_means(rows: np.ndarray, group_of_row: np.ndarray, n_groups: int) -> np.ndarray:
    """Each group's mean distribution over its rows (an item and its augmented copies)."""
    out = np.zeros((n_groups, rows.shape[1]))
    np.add.at(out, group_of_row, rows)
    return out / np.clip(out.sum(1, keepdims=True), 1e-12, None)


def refine_soft_labels(x: np.ndarray, q: np.ndarray, w: np.ndarray, groups: Sequence[str], rounds: int = 2,
                       folds: int = 5, seed: int = 0, tol: float | None = None,
                       trace: list[float] | None = None, oof: list[np.ndarray] | None = None,
                       c_reg: float = 0.1, crowd: CrowdLabels | None = None, smoothing: float = 1.0,
                       shrinkage: list[float] | None = None) -> np.ndarray:
    """EM rounds of ``r_i ∝ p_oof(c | x_i) q_i(c) / pi(c)`` (``pi`` = mean of ``q``), or, given the
    ``crowd``'s labels (``crowd.item`` indexes the sorted distinct ``groups``), of
    ``r_i ∝ p_oof(c | x_i) L_i(c)`` with ``L_i`` from confusion matrices re-estimated from ``r`` each round
    (the contributors' prior ``smoothing`` and a shrinkage chosen each round, :func:`choose_shrinkage`).

    ``tol`` None: exactly ``rounds`` rounds, the folds drawn anew each round. ``tol`` given: the folds
    stay the same in every round, so the rounds iterate one map to its fixed point, and they stop
    once a round moves the labels by less than ``tol`` (mean absolute change), ``rounds`` at most.
    ``trace`` (if given) receives each round's mean absolute change, ``oof`` (if given) the last
    round's out-of-fold probabilities (for :func:`small_loss_weights`), ``shrinkage`` (if given) each
    round's chosen shrinkage. ``c_reg``: the logistic regression's inverse regularisation strength
    (:func:`choose_regularisation` picks one).

    Returns ``q`` unchanged when ``rounds`` is 0 or there are fewer than two groups.
    """
    q = np.asarray(q, dtype=np.float64)
    if rounds <= 0 or len(set(groups)) < 2:
        return q
    prior = np.clip(q.mean(0), 1e-6, None)
    log_likelihood = np.log(np.clip(q / prior, 1e-300, None))  # log L_i(c) up to a constant per item
    group_names, group_of_row = np.unique(np.asarray(groups), return_inverse=True)
    r = q
    with track(rounds, f"label refinement ({folds} folds per round, at most {rounds} rounds)") as advance:
        for step in range(rounds):
            fold_seed = seed if tol is not None else seed + step
            p = out_of_fold_probs(np.asarray(x, dtype=np.float64), r, np.asarray(w, dtype=np.float64), groups,
                                  folds, fold_seed, c_reg)
            if crowd is not None:  # M-step for the contributors, from the current labels (mean over a group's rows)
                r_items, p_items = group_means(r, group_of_row, len(group_names)), group_means(p, group_of_row,
                                                                                               len(group_names))
                tau, _ = choose_shrinkage(crowd, r_items, p_items, smoothing, folds, fold_seed)
                log_likelihood = item_log_likelihood(crowd, worker_confusions(crowd, r_items, tau, smoothing),
                                                     len(group_names))[group_of_row]
                if shrinkage is not None:
                    shrinkage.append(tau)
            new = softmax_rows(np.log(np.clip(p, 1e-300, None)) + log_likelihood)
            change = float(np.abs(new - r).mean())
            r = new
            advance()
            if trace is not None:
                trace.append(change)
            if oof is not None:
                oof[:] = [p]
            if tol is not None and change < tol:
                break
    return r


def small_loss_weights(p_oof: np.ndarray, r: np.ndarray, seed: int = 0) -> np.ndarray:
    """Probability that each item's label ``argmax r`` is clean, from its loss under a classifier
    that never saw it: ``l_i = -log p_oof(argmax r_i | x_i)``.

    DivideMix (Li, Socher & Hoi 2020, ICLR) observes that clean items have small losses and noisy
    ones large, and fits a two-component Gaussian mixture to the per-item losses; the posterior of
    the small-mean component is the clean probability. DivideMix takes the loss of the network being
    trained after a warm-up; here the out-of-fold classifier of the label refinement plays that part
    (a peer that never saw the item, as in co-teaching), so no extra training pass is needed.
    Returns ones when the mixture does not separate (fewer than 10 items, or one component).
    """
    from sklearn.mixture import GaussianMixture

    y = np.asarray(r).argmax(1)
    loss = -np.log(np.clip(np.asarray(p_oof)[np.arange(len(y)), y], 1e-12, None))
    if len(loss) < 10 or np.ptp(loss) < 1e-9:
        return np.ones(len(loss))
    gm = GaussianMixture(2, reg_covar=5e-4, max_iter=100, random_state=seed).fit(loss[:, None])
    clean = int(np.argmin(gm.means_.ravel()))
    return gm.predict_proba(loss[:, None])[:, clean]
