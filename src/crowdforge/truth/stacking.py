r"""The default truth-inference estimator: the Dawid-Skene family, stacked by held-out label likelihood.

How much structure a crowd supports differs from crowd to crowd: one crowd needs a full confusion
matrix per worker (ordinal grades, class-dependent errors), another only one accuracy per worker,
a third nothing beyond a majority vote. No constant chosen on benchmark crowds carries over, so
the choice is made on each crowd from its own labels, by how well each model predicts labels it
did not see.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from crowdforge.truth.base import Encoded, FitPredict, encode, gold_matrix, subset
from crowdforge.truth.calibration import fit_temperature_predictive, gold_temperature, tempered
from crowdforge.truth.constrained import MACE, OneCoinDawidSkene, PooledOneCoin
from crowdforge.truth.dawid_skene import SHRINKAGE_GRID, DawidSkene

Factory = Callable[[dict[str, Any]], DawidSkene]


def _ds(tau: float) -> Factory:
    return lambda opts: DawidSkene(shrinkage=tau, **opts)


# The candidate family, from no per-worker parameter to a full confusion matrix per worker. Fixed a
# priori, never tuned.
CANDIDATES: dict[str, Factory] = {
    "majority": lambda opts: PooledOneCoin(**opts),
    "one_coin": lambda opts: OneCoinDawidSkene(**opts),
    "mace": lambda opts: MACE(**opts),
    **{f"dawid_skene(tau={tau:g})": _ds(tau) for tau in SHRINKAGE_GRID},
}


def stacking_weights(H: np.ndarray) -> np.ndarray:
    """Simplex weights maximising :math:`\\sum_j \\log \\sum_m w_m H_{jm}` (held-out predictive densities).

    Stacking of predictive distributions (Yao, Vehtari, Simpson & Gelman, Bayesian Analysis 2018;
    Wolpert 1992): unlike Bayesian model averaging, which puts all weight on one model as data
    grow, it mixes models that are each right about part of the data. Softmax-parametrised,
    L-BFGS with the analytic gradient.
    """
    H = np.maximum(np.asarray(H, float), 1e-300)
    M = H.shape[1]
    if M == 1:
        return np.ones(1)
    H = H / H.max(axis=1, keepdims=True)  # per-row scale does not move the optimum

    def f(z: np.ndarray) -> tuple[float, np.ndarray]:
        w = np.exp(z - z.max())
        w /= w.sum()
        r = H @ w
        g = -(H / r[:, None]).mean(axis=0)
        return -float(np.log(r).mean()), w * (g - w @ g)

    z = minimize(f, np.zeros(M), jac=True, method="L-BFGS-B").x
    w = np.exp(z - z.max())
    return w / w.sum()


@dataclass
class StackedDawidSkene(FitPredict):
    r"""Dawid-Skene models of increasing structure, weighted by how well they predict held-out labels.

    **Members.** All share the Dawid-Skene likelihood (Dawid & Skene 1979): task :math:`i` has a
    latent class :math:`z_i\sim\mathrm{Cat}(p)`, worker :math:`w` answers :math:`\ell` with
    probability :math:`\pi^{w}_{z_i\ell}`. They differ in how :math:`\pi^w` is constrained
    (:data:`CANDIDATES`): one accuracy for the whole crowd (majority vote as a model), one per
    worker (one-coin; Ghosh et al. 2011), MACE's spammer mixture (Hovy et al. 2013), and full
    confusion matrices shrunk toward the worker's one-coin matrix with strength :math:`\tau`
    from :math:`10^6` down to 0 (the hierarchical prior of IBCC/EBCC, Kim & Ghahramani 2012, Li
    et al. 2019, fitted by EM).

    **Evidence.** The labels are split into ``folds`` at random (a fold hides some of each item's
    labels); every member is fitted without a fold and scores the fold's labels by its predictive
    density :math:`\sum_k q^{-f}_{ik}\,\pi^{w,-f}_{k\ell}`, where :math:`q^{-f}` is the item's
    posterior from its remaining labels. A member that over-fits (full matrices for workers seen a
    few times) or under-fits (one accuracy for workers whose errors depend on the true class)
    predicts held-out labels badly. Each member's posterior is tempered (a power :math:`1/s`
    on its likelihood, :mod:`crowdforge.truth.calibration`), :math:`s` fitted on the same held-out
    labels.

    **Weights** are the stacking weights of the members' held-out predictive densities
    (:func:`stacking_weights`). The output (``output="chosen"``) is the tempered posterior of the
    member with the largest weight, fitted on all labels; ``"mixture"`` mixes the members'
    posteriors with the weights instead. Both were compared leave-one-crowd-out in
    ``bench/aggregation.py``: equal on the real crowds, while on crowds with class-dependent errors
    the mixture lets a majority-vote member (whose *label* predictions complement the others) drag
    the *truth* toward majority vote (BENCHMARKS.md). Nothing here is tuned on benchmark crowds: the family is
    fixed, the weights come from each crowd's own labels. On crowds above ``max_selection_labels``
    labels the evidence comes from a random sample of items holding about that many labels (the
    members are then fitted on all labels); that sample gives workers fewer labels than the full
    crowd, so it leans toward the simpler members.

    **Known answers** (``gold``) are clamped during every EM, and a final temperature is fitted to
    them (Guo et al. 2017) when five-fold cross-validation on the gold shows it raises the
    held-out likelihood of the known answers (``gold_temperature_gain_``, nats per item;
    :func:`crowdforge.truth.calibration.gold_temperature`). ``worker_prior`` (confusion pseudo-counts,
    a track record) enters every member.

    Fitted attributes: ``probas_``, ``labels_``, ``errors_`` and ``priors_`` (weighted means of the
    members'), ``counts_`` (expected confusion counts from this data under ``probas_``),
    ``worker_accuracy_`` / ``worker_accuracy_sd_`` (Beta posterior from ``counts_`` +
    ``worker_prior``), ``worker_n_labels_``, ``evidence_`` (per member: mean held-out
    log-likelihood per label, temperature, stacking weight, weight in the output), ``weights_``,
    ``chosen_`` (the member with the largest stacking weight), ``gold_temperature_``,
    ``n_selection_labels_``, ``n_iter_``.
    """

    folds: int = 5
    max_selection_labels: int = 100_000
    enough_heldout_labels: int = 20_000
    min_weight: float = 0.01
    n_iter: int = 100
    tol: float = 1e-6
    smoothing: float = 1.0
    gold_weight: float = 1.0
    candidates: Sequence[str] = tuple(CANDIDATES)
    stack_tempered: bool = True  # stack the tempered members' predictive densities (False: the raw ones)
    output: str = "chosen"
    random_state: int = 0
    classes: Sequence[Hashable] | None = None

    probas_: pd.DataFrame = field(init=False, repr=False)
    labels_: pd.Series = field(init=False, repr=False)
    errors_: pd.DataFrame = field(init=False, repr=False)
    counts_: pd.DataFrame = field(init=False, repr=False)
    priors_: pd.Series = field(init=False, repr=False)
    worker_accuracy_: pd.Series = field(init=False, repr=False)
    worker_accuracy_sd_: pd.Series = field(init=False, repr=False)
    worker_n_labels_: pd.Series = field(init=False, repr=False)
    evidence_: pd.DataFrame = field(init=False, repr=False)
    weights_: pd.Series = field(init=False, repr=False)
    chosen_: str = field(init=False, repr=False, default="")
    gold_temperature_: float = field(init=False, repr=False, default=1.0)
    gold_temperature_gain_: float = field(init=False, repr=False, default=0.0)
    n_selection_labels_: int = field(init=False, repr=False, default=0)
    n_iter_: int = field(init=False, repr=False, default=0)

    def _check_params(self) -> None:
        unknown = [c for c in self.candidates if c not in CANDIDATES]
        if not self.candidates or unknown:
            raise ValueError(f"candidates must be a non-empty subset of {list(CANDIDATES)}, got unknown {unknown}")
        if self.output not in ("chosen", "mixture"):
            raise ValueError(f"output must be 'chosen' or 'mixture', got {self.output!r}")
        if self.folds < 2:
            raise ValueError(f"folds must be >= 2, got {self.folds}")
        if self.max_selection_labels < 1 or not 0.0 <= self.min_weight < 1.0:
            raise ValueError("max_selection_labels must be >= 1 and min_weight in [0, 1)")

    def _member(self, name: str) -> DawidSkene:
        opts = {"n_iter": self.n_iter, "tol": self.tol, "smoothing": self.smoothing,
                "gold_weight": self.gold_weight}
        return CANDIDATES[name](opts)

    def fit(self, data: pd.DataFrame, gold: pd.Series | None = None,
            worker_prior: pd.DataFrame | None = None) -> StackedDawidSkene:
        """Fit on a long ``task, worker, label`` table (``gold``: task -> label; ``worker_prior``:
        confusion pseudo-counts in the ``errors_`` layout)."""
        self._check_params()
        enc = encode(data, self.classes)
        gold_rows, gold_onehot = gold_matrix(gold, enc.tasks, enc.classes)
        prior_counts = DawidSkene()._prior_array(worker_prior, enc)
        names = list(self.candidates)
        held, temps = self._evidence(enc, names, gold, prior_counts)
        stacked = stacking_weights(held)
        if self.output == "chosen":
            weights = (np.arange(len(stacked)) == stacked.argmax()).astype(float)
        else:
            weights = np.where(stacked >= self.min_weight, stacked, 0.0)
            weights /= weights.sum()
        K, W = enc.n_classes, enc.n_workers
        M = np.zeros((enc.n_tasks, K))
        pi_mean, p_mean, n_iter = np.zeros((W, K, K)), np.zeros(K), 0
        large = len(enc.task_idx) > self.max_selection_labels
        init = None
        for name, w, s in zip(names, weights, temps, strict=True):
            if w == 0:
                continue
            # on a large crowd each member starts from the previous one's posteriors (a few iterations
            # instead of a full EM each); on a small one each starts from majority vote
            T, log_pi, log_p, n_done, _ = self._member(name)._em(enc, gold_rows, gold_onehot, prior_counts, init)
            init = T if large else None
            L = np.asarray(enc.A @ log_pi.transpose(0, 2, 1).reshape(W * K, K))
            M += w * tempered(L, log_p, s)
            pi_mean += w * np.exp(log_pi)
            p_mean += w * np.exp(log_p)
            n_iter += n_done
        self.gold_temperature_ = 1.0
        self.gold_temperature_gain_ = 0.0
        if len(gold_rows):
            logM = np.log(np.maximum(M, 1e-300))
            self.gold_temperature_, self.gold_temperature_gain_ = gold_temperature(
                logM[gold_rows], gold_onehot.argmax(axis=1), seed=self.random_state)
            M = tempered(logM, np.zeros(K), self.gold_temperature_)
        if len(gold_rows) and self.gold_weight > 0:
            M[gold_rows] = self.gold_weight * gold_onehot + (1 - self.gold_weight) * M[gold_rows]
        self.evidence_ = pd.DataFrame({"heldout_loglik": np.log(np.maximum(held, 1e-300)).mean(axis=0),
                                       "temperature": temps, "stacking_weight": stacked, "weight": weights},
                                      index=pd.Index(names, name="model"))
        self.weights_ = self.evidence_["weight"]
        self.chosen_ = names[int(stacked.argmax())]
        DawidSkene._store(self, enc, M, np.log(np.maximum(pi_mean, 1e-300)), np.log(p_mean), prior_counts,  # type: ignore[arg-type]
                          n_iter, float("nan"))
        return self

    def _evidence(self, enc: Encoded, names: list[str], gold: pd.Series | None,
                  prior_counts: np.ndarray) -> tuple[np.ndarray, list[float]]:
        """Held-out predictive density of every selection label under every member, and the temperatures."""
        rng = np.random.default_rng(self.random_state)
        sel = enc
        n = len(enc.task_idx)
        if n > self.max_selection_labels:  # a random sample of items holding about max_selection_labels labels
            keep_items = rng.random(enc.n_tasks) < self.max_selection_labels / n
            sel = subset(enc, keep_items[enc.task_idx], compact_tasks=True)
        self.n_selection_labels_ = len(sel.task_idx)  # labels in the sample; the scored ones are a part
        g_rows, g_onehot = gold_matrix(gold, sel.tasks, sel.classes)
        # folds over the labels in a canonical order (by task, worker, label codes), so the row order
        # of the input does not change the answer
        order = np.lexsort((sel.label_idx, sel.worker_idx, sel.task_idx))
        fold = np.empty(len(order), dtype=np.int64)
        fold[order] = rng.permutation(len(order)) % self.folds
        K, W = sel.n_classes, sel.n_workers
        L_other = np.zeros((len(fold), K))
        lik = np.zeros((len(fold), len(names), K))
        log_ps = np.zeros((len(fold), len(names), K))
        held = np.zeros((len(fold), len(names)))
        temps = []
        # score folds until enough held-out labels are scored: on small crowds every fold, on large
        # ones a single fold already holds tens of thousands of labels and decides the weights
        n_eval = min(self.folds, -(-self.enough_heldout_labels * self.folds // max(len(fold), 1)))
        folds = [fold == f for f in range(n_eval)]
        trains = [subset(sel, ~out) for out in folds]
        scored = np.any(folds, axis=0)
        for m, name in enumerate(names):
            for f, (out, train) in enumerate(zip(folds, trains, strict=True)):
                _, log_pi, log_p, _, _ = self._member(name)._em(train, g_rows, g_onehot, prior_counts)
                L = np.asarray(train.A @ log_pi.transpose(0, 2, 1).reshape(W * K, K))
                L_other[out] = L[sel.task_idx[out]]
                lik[out, m] = np.exp(log_pi[sel.worker_idx[out], :, sel.label_idx[out]])
                log_ps[out, m] = log_p
            # one temperature per member; its folds' class priors differ little, use their mean
            s = fit_temperature_predictive(L_other[scored], lik[scored, m], log_ps[scored, m].mean(axis=0))
            temps.append(s)
            q = np.exp(L_other / (s if self.stack_tempered else 1.0) + log_ps[:, m])
            q /= q.sum(axis=1, keepdims=True)
            held[:, m] = (q * lik[:, m]).sum(axis=1)
        return held[scored], temps
