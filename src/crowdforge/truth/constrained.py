"""Dawid-Skene variants with fewer parameters per worker: one-coin and MACE.

Both reuse :class:`~crowdforge.truth.dawid_skene.DawidSkene`'s vectorised EM (E-step, gold
clamping, worker priors, fitted attributes) and replace only the M-step, which maps the expected
confusion counts :math:`C^{w}_{k\\ell} = \\sum_i T_{ik} n_{iw\\ell}` (plus any ``worker_prior``) to a
constrained confusion matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crowdforge.truth.base import Encoded
from crowdforge.truth.dawid_skene import _TINY, DawidSkene


def _class_log_prior(T: np.ndarray, smoothing: float) -> np.ndarray:
    K = T.shape[1]
    c = T.sum(axis=0) + smoothing / K
    return np.log(np.maximum(c / c.sum(), _TINY))


@dataclass
class OneCoinDawidSkene(DawidSkene):
    r"""One-coin Dawid-Skene: each worker is right with probability :math:`a_w`, wrong evenly.

    .. math:: \pi^{w}_{k\ell} = a_w\,[k=\ell] + \frac{1-a_w}{K-1}\,[k\neq\ell],\qquad
              a_w = \frac{\sum_k C^{w}_{kk} + \alpha}{\sum_{k\ell} C^{w}_{k\ell} + 2\alpha}

    (MAP under a Beta(:math:`1+\alpha, 1+\alpha`) prior, :math:`\alpha` = ``smoothing``). One
    parameter per worker: robust on sparse crowds where a full confusion matrix over-fits, but
    blind to systematic confusions (ordinal scales, adversaries). Ghosh, Kale & McAfee, "Who
    moderates the moderators?", EC 2011; Karger, Oh & Shah, NIPS 2011; crowd-kit's
    ``OneCoinDawidSkene``. ``shrinkage`` and ``shrink_target`` are unused.
    """

    def _m_step(self, enc: Encoded, T: np.ndarray, prior_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        K = enc.n_classes
        counts = self._expected_counts(enc, T) + prior_counts
        a = self.smoothing
        acc = (np.trace(counts, axis1=1, axis2=2) + a) / (counts.sum(axis=(1, 2)) + 2 * a)
        pi = np.broadcast_to(((1 - acc) / (K - 1))[:, None, None], counts.shape).copy()
        idx = np.arange(K)
        pi[:, idx, idx] = acc[:, None]
        return np.log(np.maximum(pi, _TINY)), _class_log_prior(T, self.smoothing)


@dataclass
class MACE(DawidSkene):
    r"""MACE (Multi-Annotator Competence Estimation), fitted by EM on the expected confusion counts.

    **Model** (Hovy, Berg-Kirkpatrick, Vaswani & Hovy, "Learning whom to trust with MACE",
    NAACL 2013). On each item, worker :math:`w` either knows the answer and gives the truth, or
    (with probability :math:`\theta_w`) spams and draws a label from their own strategy
    :math:`\xi_w`, whatever the truth. Marginally

    .. math:: \pi^{w}_{k\ell} = (1-\theta_w)\,[k=\ell] + \theta_w\,\xi_{w\ell}.

    **EM.** Given the expected counts :math:`C^{w}_{k\ell}`, the probability that an observed
    :math:`\ell` under truth :math:`k` was spam is :math:`r_{k\ell} = \theta_w\xi_{w\ell}/\pi^{w}_{k\ell}`
    (1 when :math:`k\neq\ell`). With spam counts :math:`S_{w\ell} = \sum_k C^{w}_{k\ell} r_{k\ell}`,
    the M-step is :math:`\theta_w = (\sum_\ell S_{w\ell} + a)/(n_w + a + b)` and
    :math:`\xi_{w\ell} \propto S_{w\ell} + \alpha/K` (MAP with a Beta(:math:`a, b`) prior on
    :math:`\theta` -- ``spam_prior`` -- and ``smoothing`` :math:`\alpha` on :math:`\xi`). One E-step
    of the latent spam indicators per outer iteration (generalised EM). The original fits the
    same model by variational Bayes with random restarts; this version is deterministic (starts
    from majority vote). Two parameters per worker plus a strategy: good on sparse crowds with
    spammers and label-biased workers.

    Extra fitted attributes: ``spam_prob_`` (:math:`\theta_w`), ``strategy_`` (:math:`\xi_w`, worker x class).
    """

    spam_prior: tuple[float, float] = (1.0, 1.0)

    def _em(self, enc, gold_rows, gold_onehot, prior_counts, init=None):
        K = enc.n_classes
        self._theta = np.full(enc.n_workers, 0.5)
        self._xi = np.full((enc.n_workers, K), 1.0 / K)
        return super()._em(enc, gold_rows, gold_onehot, prior_counts, init)

    def _m_step(self, enc: Encoded, T: np.ndarray, prior_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        K = enc.n_classes
        counts = self._expected_counts(enc, T) + prior_counts  # [w, true, obs]
        theta, xi = self._theta, self._xi
        idx = np.arange(K)
        diag = counts[:, idx, idx]  # [w, l]
        spam_part = theta[:, None] * xi
        r_diag = spam_part / np.maximum(1 - theta[:, None] + spam_part, _TINY)
        spam = counts.sum(axis=1) - diag * (1 - r_diag)  # [w, l]: off-diagonal all spam
        a, b = self.spam_prior
        n = counts.sum(axis=(1, 2))
        theta = (spam.sum(axis=1) + a) / (n + a + b)
        xi = spam + self.smoothing / K
        xi = xi / xi.sum(axis=1, keepdims=True)
        self._theta, self._xi = theta, xi
        pi = theta[:, None, None] * xi[:, None, :] + (1 - theta)[:, None, None] * np.eye(K)[None]
        return np.log(np.maximum(pi, _TINY)), _class_log_prior(T, self.smoothing)

    def _store(self, enc, T, log_pi, log_p, prior_counts, n_iter, loglik):
        import pandas as pd

        super()._store(enc, T, log_pi, log_p, prior_counts, n_iter, loglik)
        self.spam_prob_ = pd.Series(self._theta, index=enc.workers, name="spam_prob")
        self.strategy_ = pd.DataFrame(self._xi, index=enc.workers, columns=enc.classes)


@dataclass
class PooledOneCoin(DawidSkene):
    r"""Every worker right with one shared probability :math:`a`, wrong evenly: majority vote as a model.

    .. math:: \pi^{w}_{k\ell} = a\,[k=\ell] + \frac{1-a}{K-1}\,[k\neq\ell]\ \text{for every } w

    The posterior is a majority vote sharpened by :math:`a` and the class prior, so it gives the
    majority answer wherever the prior does not break a tie. Being a likelihood model, it can be
    scored on held-out labels beside the richer ones, which is how the default decides when a
    crowd supports no per-worker parameters at all.
    """

    def _m_step(self, enc: Encoded, T: np.ndarray, prior_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        K = enc.n_classes
        counts = self._expected_counts(enc, T) + prior_counts
        a = self.smoothing
        acc = (float(np.trace(counts, axis1=1, axis2=2).sum()) + a) / (float(counts.sum()) + 2 * a)
        pi = np.full((enc.n_workers, K, K), (1 - acc) / (K - 1))
        idx = np.arange(K)
        pi[:, idx, idx] = acc
        return np.log(np.maximum(pi, _TINY)), _class_log_prior(T, self.smoothing)
