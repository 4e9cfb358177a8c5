"""Majority vote: the baseline every truth-inference method is measured against."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from crowdforge.truth.base import FitPredict, encode, gold_matrix, most_probable, vote_counts
from crowdforge.truth.dawid_skene import DawidSkene


@dataclass
class MajorityVote(FitPredict):
    r"""Majority vote, optionally weighted by per-worker skills.

    For task :math:`i` and class :math:`k`,

    .. math:: P(y_i = k) = \frac{\sum_{w} s_w [\ell_{iw} = k]}{\sum_w s_w}

    where :math:`\ell_{iw}` is worker :math:`w`'s label for task :math:`i` and :math:`s_w` their
    skill (1 for everyone unless ``skills`` is given). Ties go to the first class in class order,
    so the result is deterministic (crowd-kit's ``MajorityVote`` does the same via ``idxmax``).

    The same contract as every estimator here: ``fit(data, gold=None, worker_prior=None)``. Gold
    tasks get their known answer; a worker's accuracy is the Beta(1 + agreements, 1 + disagreements)
    posterior of their agreement with the output, ``worker_prior`` confusion pseudo-counts added.

    Args:
        classes: the class list (order of ``probas_`` columns). Default: sorted observed labels.
            A label outside a given list is a ``ValueError``.
        skills: per-worker vote weights; a worker missing from it gets ``default_skill``.

    Fitted attributes: ``probas_`` (vote shares), ``labels_``, ``skills_`` (each worker's
    agreement with the majority), ``priors_``, ``errors_`` / ``counts_`` (confusion of each
    worker against the output, crowd-kit layout), ``worker_accuracy_``, ``worker_accuracy_sd_``,
    ``worker_n_labels_``.
    """

    classes: Sequence[Hashable] | None = None
    skills: pd.Series | None = None
    default_skill: float = 1.0

    probas_: pd.DataFrame = field(init=False, repr=False)
    labels_: pd.Series = field(init=False, repr=False)
    skills_: pd.Series = field(init=False, repr=False)
    priors_: pd.Series = field(init=False, repr=False)
    errors_: pd.DataFrame = field(init=False, repr=False)
    counts_: pd.DataFrame = field(init=False, repr=False)
    worker_accuracy_: pd.Series = field(init=False, repr=False)
    worker_accuracy_sd_: pd.Series = field(init=False, repr=False)
    worker_n_labels_: pd.Series = field(init=False, repr=False)

    def fit(self, data: pd.DataFrame, gold: pd.Series | None = None,
            worker_prior: pd.DataFrame | None = None) -> MajorityVote:
        enc = encode(data, self.classes)
        weights = None
        if self.skills is not None:
            weights = pd.Series(self.skills).reindex(enc.workers).fillna(self.default_skill).to_numpy(float)
            if (weights < 0).any():
                raise ValueError("skills must be non-negative")
        votes = vote_counts(enc, weights)
        totals = votes.sum(axis=1, keepdims=True)
        K, W = enc.n_classes, enc.n_workers
        probas = np.divide(votes, totals, out=np.full_like(votes, 1.0 / K), where=totals > 0)
        gold_rows, gold_onehot = gold_matrix(gold, enc.tasks, enc.classes)
        probas[gold_rows] = gold_onehot
        self.probas_ = pd.DataFrame(probas, index=enc.tasks, columns=enc.classes)
        self.probas_.columns.name = "label"
        self.labels_ = most_probable(self.probas_)
        agree = (probas.argmax(axis=1)[enc.task_idx] == enc.label_idx).astype(float)
        n = np.bincount(enc.worker_idx, minlength=W)
        self.skills_ = pd.Series(np.bincount(enc.worker_idx, weights=agree, minlength=W) / n,
                                 index=enc.workers, name="skill")
        self.priors_ = pd.Series(probas.mean(axis=0), index=enc.classes, name="prior")
        data_counts = DawidSkene._expected_counts(enc, probas)  # [w, true, observed]
        rows = pd.MultiIndex.from_product([enc.workers, enc.classes], names=["worker", "label"])
        self.counts_ = pd.DataFrame(data_counts.transpose(0, 2, 1).reshape(W * K, K), index=rows, columns=enc.classes)
        counts = data_counts + DawidSkene()._prior_array(worker_prior, enc)
        col = counts.sum(axis=2, keepdims=True)
        pi = np.divide(counts, col, out=np.full_like(counts, 1.0 / K), where=col > 0)
        self.errors_ = pd.DataFrame(pi.transpose(0, 2, 1).reshape(W * K, K), index=rows, columns=enc.classes)
        correct = np.trace(counts, axis1=1, axis2=2)
        a, b = 1.0 + correct, 1.0 + counts.sum(axis=(1, 2)) - correct
        self.worker_accuracy_ = pd.Series(a / (a + b), index=enc.workers, name="accuracy")
        self.worker_accuracy_sd_ = pd.Series(np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1.0))), index=enc.workers,
                                             name="accuracy_sd")
        self.worker_n_labels_ = pd.Series(n, index=enc.workers, name="n_labels")
        return self

