"""Dawid-Skene truth inference with smoothing, one-coin shrinkage, gold anchors and worker priors."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from crowdforge.truth.base import (
    Encoded,
    FitPredict,
    col_sum,
    encode,
    gold_matrix,
    most_probable,
    row_max,
    row_sum,
    vote_counts,
)

_TINY = 1e-300
# Shrinkage strengths worth telling apart: a log grid over the range where the fits differ, from a
# one-coin matrix per worker (1e6) to a free confusion matrix (0). Fixed a priori, never tuned.
SHRINKAGE_GRID: tuple[float, ...] = (1e6, 100.0, 30.0, 10.0, 3.0, 1.0, 0.0)


@dataclass
class DawidSkene(FitPredict):
    r"""Dawid-Skene EM over per-worker confusion matrices, made robust for small, messy crowds.

    **Model** (Dawid & Skene, "Maximum likelihood estimation of observer error-rates using the EM
    algorithm", *Applied Statistics* 28(1):20-28, 1979). Each task :math:`i` has a latent true
    class :math:`z_i \sim \mathrm{Cat}(p)`. Worker :math:`w` answers :math:`\ell` with probability
    :math:`\pi^{w}_{k\ell} = P(\ell_{iw}=\ell \mid z_i=k)`, independently across workers given
    :math:`z_i`. With :math:`n_{iw\ell}` the number of times :math:`w` said :math:`\ell` on
    :math:`i`, EM alternates

    * E-step: :math:`T_{ik} = P(z_i=k\mid\text{labels}) \propto p_k \prod_{w,\ell}
      (\pi^{w}_{k\ell})^{n_{iw\ell}}`;
    * M-step: :math:`\pi^{w}_{k\ell} \propto \sum_i T_{ik}\, n_{iw\ell} + \beta^{w}_{k\ell}`,
      :math:`p_k \propto \sum_i T_{ik} + \alpha`.

    The plain model (what crowd-kit's ``DawidSkene`` fits, :math:`\beta = 0`) over-fits workers
    with few labels: a worker seen twice gets a confusion row of exact zeros and ones. Here the
    M-step is a MAP estimate under a Dirichlet prior :math:`\beta^{w}_{k\cdot}` built from

    1. ``smoothing`` :math:`\alpha`: a flat Dirichlet pseudo-count of :math:`\alpha` per confusion
       row (:math:`\alpha/K` per cell; likewise for the class prior), so no probability is ever
       exactly 0. Spreading a fixed row total keeps the prior weak when :math:`K` is large;
    2. ``shrinkage`` :math:`\tau`: :math:`\tau` pseudo-labels per row spread like a *one-coin*
       matrix with the worker's own accuracy :math:`a_w` on the diagonal (re-estimated every
       iteration) and the error mass :math:`1-a_w` spread over the off-diagonal cells either evenly
       (``shrink_target="one_coin"``) or like the whole crowd's pooled errors for that true class
       (``"population"``, the default: on ordinal scales such as relevance grades errors go to the
       neighbouring grade, which the even spread ignores). A row backed by :math:`n` expected
       labels is pulled toward that target with weight :math:`\tau/(n+\tau)`: sparse workers
       behave like a one-coin model (few parameters), prolific workers keep their full confusion
       matrix (in the spirit of hierarchical DS, e.g. Raykar et al. JMLR 2010, and Kim &
       Ghahramani's IBCC, AISTATS 2012); the comparison with crowd-kit's plain DS is in BENCHMARKS.md;
    3. ``worker_prior``: per-worker pseudo-counts (e.g. a contributor's track record from past
       runs) added to the expected counts as-is.

    **Known answers** (``gold``): the posterior of a gold task is clamped to
    :math:`g\,\mathbf{1}[k=y_i] + (1-g)\,T_{ik}` (:math:`g` = ``gold_weight``) at every E-step, so
    those tasks anchor the confusion estimates -- the semi-supervised DS of the original paper's
    discussion, as crowd-kit's ``true_labels`` argument does for the initialisation only.

    EM starts from the majority vote posteriors (gold already clamped), is vectorised as two
    sparse matrix products per iteration (see :mod:`crowdforge.truth.base`) and is deterministic.
    It stops when the observed-data log-likelihood changes by less than ``tol`` (relative).

    Fitted attributes (crowd-kit names where they exist):
        probas_: task x class posteriors. labels_: arg-max per task.
        errors_: confusion matrices, rows ``(worker, observed label)``, columns the true class,
        each column summing to 1 per worker (crowd-kit's layout). priors_: class prior.
        counts_: expected confusion counts from this data only (same layout, no prior added) --
        what a track record should store.
        worker_accuracy_, worker_accuracy_sd_: mean and sd of the Beta(1 + correct, 1 + wrong)
        posterior of each worker's accuracy, where correct/wrong are the expected counts
        (from the data and ``worker_prior``). worker_n_labels_: labels per worker.
        n_iter_, loglik_: iterations run and the final log-likelihood.
    """

    n_iter: int = 100
    tol: float = 1e-6
    smoothing: float = 1.0
    shrinkage: float = 3.0
    gold_weight: float = 1.0
    shrink_target: str = "population"
    classes: Sequence[Hashable] | None = None

    probas_: pd.DataFrame = field(init=False, repr=False)
    labels_: pd.Series = field(init=False, repr=False)
    errors_: pd.DataFrame = field(init=False, repr=False)
    counts_: pd.DataFrame = field(init=False, repr=False)
    priors_: pd.Series = field(init=False, repr=False)
    worker_accuracy_: pd.Series = field(init=False, repr=False)
    worker_accuracy_sd_: pd.Series = field(init=False, repr=False)
    worker_n_labels_: pd.Series = field(init=False, repr=False)
    n_iter_: int = field(init=False, repr=False, default=0)
    loglik_: float = field(init=False, repr=False, default=float("nan"))

    # ------------------------------------------------------------------ public API
    def fit(
        self,
        data: pd.DataFrame,
        gold: pd.Series | None = None,
        worker_prior: pd.DataFrame | None = None,
    ) -> DawidSkene:
        """Fit on a long ``task, worker, label`` table.

        Args:
            data: one row per label.
            gold: known answers, ``task -> label``; tasks not in ``data`` are ignored.
            worker_prior: confusion pseudo-counts in the ``errors_`` layout (rows
                ``(worker, observed label)``, columns true class); workers absent get none.
        """
        self._check_params()
        enc = encode(data, self.classes)
        gold_rows, gold_onehot = gold_matrix(gold, enc.tasks, enc.classes)
        prior_counts = self._prior_array(worker_prior, enc)  # [w, k_true, l_obs]
        return self._fit_encoded(enc, gold_rows, gold_onehot, prior_counts)

    def _fit_encoded(self, enc: Encoded, gold_rows: np.ndarray, gold_onehot: np.ndarray,
                     prior_counts: np.ndarray) -> DawidSkene:
        T, log_pi, log_p, n_done, loglik = self._em(enc, gold_rows, gold_onehot, prior_counts)
        self._store(enc, T, log_pi, log_p, prior_counts, n_done, loglik)
        return self

    def _em(self, enc: Encoded, gold_rows: np.ndarray, gold_onehot: np.ndarray, prior_counts: np.ndarray,
            init: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, float]:
        """EM on encoded data; ``init`` (task x class posteriors) warm-starts it (default: majority vote).

        Returns the posteriors, log confusion ``[w, true, observed]``, log class prior, iterations run
        and the final log-likelihood.
        """
        if init is None:
            votes = vote_counts(enc)
            tot = row_sum(votes)[:, None]  # 0 for a task whose labels are all held out: start it uniform
            init = np.divide(votes, tot, out=np.full_like(votes, 1.0 / enc.n_classes), where=tot > 0)
        T = self._clamp(init, gold_rows, gold_onehot)
        prev = -np.inf
        loglik = -np.inf
        n_done = 0
        for n_done in range(1, self.n_iter + 1):
            log_pi, log_p = self._m_step(enc, T, prior_counts)
            T, loglik = self._e_step(enc, log_pi, log_p)
            T = self._clamp(T, gold_rows, gold_onehot)
            if np.isfinite(prev) and abs(loglik - prev) <= self.tol * max(1.0, abs(prev)):
                break
            prev = loglik
        log_pi, log_p = self._m_step(enc, T, prior_counts)
        return T, log_pi, log_p, n_done, loglik


    # ------------------------------------------------------------------ EM
    def _check_params(self) -> None:
        if self.n_iter < 1:
            raise ValueError(f"n_iter must be >= 1, got {self.n_iter}")
        if self.smoothing < 0 or self.shrinkage < 0:
            raise ValueError("smoothing and shrinkage must be >= 0")
        if self.shrink_target not in ("one_coin", "population"):
            raise ValueError(f"shrink_target must be 'one_coin' or 'population', got {self.shrink_target!r}")
        if not 0.0 <= self.gold_weight <= 1.0:
            raise ValueError(f"gold_weight must be in [0, 1], got {self.gold_weight}")

    def _clamp(self, T: np.ndarray, rows: np.ndarray, onehot: np.ndarray) -> np.ndarray:
        if len(rows) and self.gold_weight > 0:
            T = T.copy()
            T[rows] = self.gold_weight * onehot + (1.0 - self.gold_weight) * T[rows]
        return T

    @staticmethod
    def _expected_counts(enc: Encoded, T: np.ndarray) -> np.ndarray:
        """counts[w, k_true, l_obs] = sum_i T_ik n_iwl, as one sparse product."""
        K = enc.n_classes
        flat = np.asarray(enc.AT @ T)  # (W*K_obs, K_true)
        return flat.reshape(enc.n_workers, K, K).transpose(0, 2, 1)

    def _m_step(self, enc: Encoded, T: np.ndarray, prior_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        K = enc.n_classes
        pi = shrunk_confusions(self._expected_counts(enc, T) + prior_counts, self.smoothing, self.shrinkage,
                               self.shrink_target)
        class_counts = col_sum(T) + self.smoothing / K
        p = class_counts / class_counts.sum() if class_counts.sum() > 0 else np.full(K, 1.0 / K)
        return np.log(np.maximum(pi, _TINY)), np.log(np.maximum(p, _TINY))

    @staticmethod
    def _e_step(enc: Encoded, log_pi: np.ndarray, log_p: np.ndarray) -> tuple[np.ndarray, float]:
        K = enc.n_classes
        obs_major = log_pi.transpose(0, 2, 1).reshape(enc.n_workers * K, K)  # rows (w, l)
        ll = np.asarray(enc.A @ obs_major) + log_p
        top = row_max(ll)[:, None]
        ex = np.exp(ll - top)
        s = row_sum(ex)[:, None]
        return ex / s, float((np.log(s) + top).sum())

    def _prior_array(self, worker_prior: pd.DataFrame | None, enc: Encoded) -> np.ndarray:
        K, W = enc.n_classes, enc.n_workers
        out = np.zeros((W, K, K))
        if worker_prior is None or len(worker_prior) == 0:
            return out
        if not isinstance(worker_prior.index, pd.MultiIndex) or worker_prior.index.nlevels != 2:
            raise ValueError("worker_prior must have a (worker, observed label) MultiIndex, like errors_")
        missing_cols = enc.classes.difference(worker_prior.columns)
        if len(missing_cols):
            raise ValueError(f"worker_prior lacks true-class column(s) {list(missing_cols)}")
        vals = worker_prior[list(enc.classes)].to_numpy(float)
        if not np.isfinite(vals).all() or (vals < 0).any():
            raise ValueError("worker_prior pseudo-counts must be finite and >= 0")
        w_pos = enc.workers.get_indexer(worker_prior.index.get_level_values(0))
        l_pos = enc.classes.get_indexer(worker_prior.index.get_level_values(1))
        keep = (w_pos >= 0) & (l_pos >= 0)
        # out[w, k_true, l_obs] += vals[row, k_true]
        np.add.at(out, (w_pos[keep], slice(None), l_pos[keep]), vals[keep])
        return out

    def _store(self, enc: Encoded, T: np.ndarray, log_pi: np.ndarray, log_p: np.ndarray,
               prior_counts: np.ndarray, n_iter: int, loglik: float) -> None:
        K, W = enc.n_classes, enc.n_workers
        self.probas_ = pd.DataFrame(T, index=enc.tasks, columns=enc.classes)
        self.probas_.columns.name = "label"
        self.labels_ = most_probable(self.probas_)
        self.priors_ = pd.Series(np.exp(log_p), index=enc.classes, name="prior")
        rows = pd.MultiIndex.from_product([enc.workers, enc.classes], names=["worker", "label"])
        pi = np.exp(log_pi)
        self.errors_ = pd.DataFrame(pi.transpose(0, 2, 1).reshape(W * K, K), index=rows, columns=enc.classes)
        data_counts = DawidSkene._expected_counts(enc, T)  # also stores StackedDawidSkene fits
        self.counts_ = pd.DataFrame(data_counts.transpose(0, 2, 1).reshape(W * K, K), index=rows,
                                    columns=enc.classes)
        counts = data_counts + prior_counts
        correct = np.trace(counts, axis1=1, axis2=2)
        wrong = counts.sum(axis=(1, 2)) - correct
        a, b = 1.0 + correct, 1.0 + wrong
        mean = a / (a + b)
        sd = np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1.0)))
        self.worker_accuracy_ = pd.Series(mean, index=enc.workers, name="accuracy")
        self.worker_accuracy_sd_ = pd.Series(sd, index=enc.workers, name="accuracy_sd")
        self.worker_n_labels_ = pd.Series(np.bincount(enc.worker_idx, minlength=W), index=enc.workers,
                                          name="n_labels")
        self.n_iter_ = n_iter
        self.loglik_ = loglik


def shrunk_confusions(counts: np.ndarray, smoothing: float, shrinkage: float,
                      shrink_target: str = "population") -> np.ndarray:
    """``pi[w, true, observed]`` from confusion counts ``[w, true, observed]``: the MAP estimate under
    :class:`DawidSkene`'s Dirichlet prior (``shrinkage`` pseudo-labels per row toward the worker's
    one-coin matrix with the errors spread like ``shrink_target``, then ``smoothing`` per row)."""
    K = counts.shape[1]
    if shrinkage > 0:
        total = counts.sum(axis=(1, 2))
        correct = np.trace(counts, axis1=1, axis2=2)
        acc = (correct + 1.0) / (total + 2.0)  # Beta(1,1)-smoothed one-coin accuracy
        idx = np.arange(K)
        # where a worker errs: the population's error pattern per true class (pooled counts,
        # diagonal removed, rows normalised); flat 1/(K-1) when the crowd makes no errors
        pooled = counts.sum(axis=0) + 1e-9
        pooled[idx, idx] = 0.0
        pattern = pooled / pooled.sum(axis=1, keepdims=True)
        if shrink_target == "one_coin":
            pattern = np.full((K, K), 1.0 / (K - 1))
            pattern[idx, idx] = 0.0
        target = (1.0 - acc)[:, None, None] * pattern[None, :, :]
        target[:, idx, idx] = acc[:, None]
        counts = counts + shrinkage * target
    counts = counts + smoothing / K  # a row total of `smoothing`, spread evenly
    row = counts.sum(axis=2, keepdims=True)
    return np.divide(counts, row, out=np.full_like(counts, 1.0 / K), where=row > 0)


def confusion_frame_to_array(frame: pd.DataFrame, worker: Hashable, classes: Sequence[Hashable]) -> np.ndarray:
    """One worker's block of an ``errors_``/``counts_`` frame as a [true, observed] array."""
    block = frame.xs(worker, level=0).reindex(index=list(classes), columns=list(classes)).fillna(0.0)
    return block.to_numpy(float).T
