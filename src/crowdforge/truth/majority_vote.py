"""Majority vote: the baseline every truth-inference method is measured against."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from crowdforge.truth.base import encode, most_probable, vote_counts


@dataclass
class MajorityVote:
    r"""Majority vote, optionally weighted by per-worker skills.

    For task :math:`i` and class :math:`k`,

    .. math:: P(y_i = k) = \frac{\sum_{w} s_w [\ell_{iw} = k]}{\sum_w s_w}

    where :math:`\ell_{iw}` is worker :math:`w`'s label for task :math:`i` and :math:`s_w` their
    skill (1 for everyone unless ``skills`` is given). Ties go to the first class in class order,
    so the result is deterministic (crowd-kit's ``MajorityVote`` does the same via ``idxmax``).

    Args:
        classes: the class list (order of ``probas_`` columns). Default: sorted observed labels.
            A label outside a given list is a ``ValueError``.
        default_skill: the skill of a worker missing from ``skills``.

    Fitted attributes:
        probas_: task x class DataFrame of vote shares. labels_: the arg-max per task.
        skills_: per-worker agreement with the majority (the fraction of their labels that match
        it) -- the usual cheap reliability proxy.
    """

    classes: Sequence[Hashable] | None = None
    default_skill: float = 1.0

    probas_: pd.DataFrame = field(init=False, repr=False)
    labels_: pd.Series = field(init=False, repr=False)
    skills_: pd.Series = field(init=False, repr=False)

    def fit(self, data: pd.DataFrame, skills: pd.Series | None = None) -> MajorityVote:
        enc = encode(data, self.classes)
        weights = None
        if skills is not None:
            weights = pd.Series(skills).reindex(enc.workers).fillna(self.default_skill).to_numpy(float)
            if (weights < 0).any():
                raise ValueError("skills must be non-negative")
        votes = vote_counts(enc, weights)
        totals = votes.sum(axis=1, keepdims=True)
        K = enc.n_classes
        probas = np.divide(votes, totals, out=np.full_like(votes, 1.0 / K), where=totals > 0)
        self.probas_ = pd.DataFrame(probas, index=enc.tasks, columns=enc.classes)
        self.probas_.columns.name = "label"
        self.labels_ = most_probable(self.probas_)
        agree = (probas.argmax(axis=1)[enc.task_idx] == enc.label_idx).astype(float)
        n = np.bincount(enc.worker_idx, minlength=enc.n_workers)
        self.skills_ = pd.Series(np.bincount(enc.worker_idx, weights=agree, minlength=enc.n_workers) / n,
                                 index=enc.workers, name="skill")
        return self

    def fit_predict(self, data: pd.DataFrame, skills: pd.Series | None = None) -> pd.Series:
        return self.fit(data, skills).labels_

    def fit_predict_proba(self, data: pd.DataFrame, skills: pd.Series | None = None) -> pd.DataFrame:
        return self.fit(data, skills).probas_
