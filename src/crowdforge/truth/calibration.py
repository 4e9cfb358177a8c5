r"""Calibration of truth-inference posteriors: temperature fits and the expected calibration error.

EM posteriors are over-confident: the model treats workers as independent given the truth, but
real errors are correlated (hard items fool many workers at once), so each extra label counts as
more evidence than it is. The fix here is a temperature :math:`s` on the likelihood part of the
posterior,

.. math:: q_{ik} \propto p_k \exp\!\Big(\tfrac{1}{s}\sum_{w,\ell} n_{iw\ell}\log\pi^{w}_{k\ell}\Big),

(:math:`s>1` tempers, "power posterior"), fitted in one of two ways:

* **from gold** (known answers): :math:`s` maximises the log-likelihood of the gold labels under
  :math:`q` -- plain temperature scaling (Guo et al., ICML 2017) on the crowd's posterior;
* **from the labels themselves** (no gold needed): every label is held out in turn; the posterior of
  its item from the *other* labels, :math:`q^{-(iw)}`, predicts it as
  :math:`\sum_k q^{-(iw)}_{k}\pi^{w}_{k\ell_{iw}}`; :math:`s` maximises the mean log of these
  predictions. If the posteriors are over-confident, the held-out labels are predicted badly, so
  this pushes :math:`s` up; if there is no correlation it stays near 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar

from crowdforge.truth.base import row_max, row_sum

GOLD_CHECK_FOLDS = 5
GOLD_CHECK_MIN_ITEMS = 20  # fewer gold items say too little about calibration to be worth the refits
S_BOUNDS = (1.0, 20.0)  # temper only: the independence assumption over-states evidence, never under-states it


def softmax_rows(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - row_max(z)[:, None])
    return e / row_sum(e)[:, None]


def tempered(L: np.ndarray, log_p: np.ndarray, s: float) -> np.ndarray:
    """Posteriors with the likelihood part ``L`` (task x class) divided by temperature ``s``."""
    return softmax_rows(L / s + log_p)


def fit_temperature_gold(L: np.ndarray, log_p: np.ndarray, y: np.ndarray) -> float:
    """Temperature maximising the log-likelihood of known answers ``y`` (class codes) for rows ``L``."""
    if len(y) == 0:
        return 1.0

    def nll(s: float) -> float:
        q = tempered(L, log_p, s)
        return -float(np.log(np.maximum(q[np.arange(len(y)), y], 1e-300)).mean())

    return float(minimize_scalar(nll, bounds=S_BOUNDS, method="bounded", options={"xatol": 1e-3}).x)


def gold_temperature(logits: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0) -> tuple[float, float]:
    """The gold temperature if cross-validation on the gold says it helps, else 1.

    A temperature fitted on a handful of known answers can make things worse (it chases the few
    items it sees), so it is checked first: the gold is split into ``folds``; each fold's answers
    are scored under the temperature fitted on the other folds and under none. Returns the
    temperature fitted on all the gold when the held-out log-likelihood gain (nats per gold item,
    the second value) is positive, else ``(1.0, gain)``. Needs at least ``folds`` items.
    """
    n = len(y)
    if n < folds:
        return 1.0, 0.0
    fold = np.random.default_rng(seed).permutation(n) % folds
    K = logits.shape[1]
    gain = 0.0
    for f in range(folds):
        out = fold == f
        s = fit_temperature_gold(logits[~out], np.zeros(K), y[~out])
        rows = np.arange(out.sum())
        with_s = tempered(logits[out], np.zeros(K), s)[rows, y[out]]
        without = tempered(logits[out], np.zeros(K), 1.0)[rows, y[out]]
        gain += float((np.log(np.maximum(with_s, 1e-300)) - np.log(np.maximum(without, 1e-300))).sum())
    gain /= n
    return (fit_temperature_gold(logits, np.zeros(K), y) if gain > 0 else 1.0), gain


def fit_temperature_heldout(L_rows: np.ndarray, log_pi_label: np.ndarray, log_p: np.ndarray) -> float:
    """Temperature maximising the (approximate leave-one-out) predictive likelihood of single labels.

    Args:
        L_rows: for each sampled label, the likelihood part of its item's posterior (labels x K).
        log_pi_label: for each sampled label, :math:`\\log\\pi^{w}_{k\\ell}` of its worker and
            observed class, over true classes ``k`` (labels x K).
        log_p: log class prior.
    """
    return fit_temperature_predictive(L_rows - log_pi_label, np.exp(log_pi_label), log_p)


def fit_temperature_predictive(L_other: np.ndarray, lik: np.ndarray, log_p: np.ndarray) -> float:
    """Temperature maximising the likelihood of held-out labels.

    ``L_other``: per held-out label, the likelihood part of its item's posterior from the *other*
    labels (labels x K); ``lik``: :math:`\\pi^{w}_{k\\ell}` of the held-out label over true classes.
    The temperature stays 1 when the held-out labels say nothing about it (no item has other
    labels: a single worker, or one label per item), so a flat objective never tempers.
    """
    if len(L_other) == 0:
        return 1.0

    def nll(s: float) -> float:
        q = tempered(L_other, log_p, s)
        return -float(np.log(np.maximum(row_sum(q * lik), 1e-300)).mean())

    s = float(minimize_scalar(nll, bounds=S_BOUNDS, method="bounded", options={"xatol": 1e-3}).x)
    return s if nll(s) < nll(1.0) - 1e-9 else 1.0


REPORT_ECE_BINS = 10  # the bins of every ECE a pipeline report shows (ensemble report, run report)


def expected_calibration_error(probas: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    r"""ECE of the arg-max confidence: :math:`\sum_b \frac{|B_b|}{n}\,|\mathrm{acc}(B_b)-\mathrm{conf}(B_b)|`
    over ``n_bins`` equal-width confidence bins (Naeini et al., AAAI 2015; Guo et al., 2017)."""
    probas = np.asarray(probas, float)
    return confidence_ece(probas.max(axis=1), probas.argmax(axis=1) == np.asarray(y), n_bins)


def confidence_ece(conf: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """The ECE of confidences and whether each answer was right (bins ``(lo, hi]``, the first closed at 0)."""
    conf, correct = np.asarray(conf, float), np.asarray(correct, float)
    if len(conf) == 0:
        return float("nan")
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    gap = np.abs(np.bincount(bins, weights=correct, minlength=n_bins)
                 - np.bincount(bins, weights=conf, minlength=n_bins))
    return float(gap.sum() / len(conf))


def ece_sampling_floor(probas: np.ndarray, ece: float | None = None, n_bins: int = 15, draws: int = 2000,
                       seed: int = 0) -> dict[str, float]:
    """What ECE a *perfectly calibrated* model with these confidences would show on this many items.

    ECE from a finite test set is biased upward: even if every prediction with confidence ``c`` is
    right with probability exactly ``c``, the binned accuracies scatter around ``c``. Consistency
    resampling (Bröcker & Smith 2007, "Increasing the Reliability of Reliability Diagrams") draws
    each prediction's correctness from its own confidence ``draws`` times and recomputes the ECE.
    ``mean`` is that floor; ``p_value`` (with ``ece``) is the share of perfectly calibrated draws
    whose ECE is at least the measured one: a large value means the measured ECE is what sampling
    alone produces, and the test set is too small to show miscalibration.
    """
    conf = np.asarray(probas, dtype=np.float64).max(1)
    n = len(conf)
    if n == 0:
        return {"mean": 0.0, "p90": 0.0, "p_value": 1.0}
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)  # the bins of expected_calibration_error
    conf_sum = np.bincount(bins, weights=conf, minlength=n_bins)
    rng = np.random.default_rng(seed)
    # sum_b n_b/n |acc_b - conf_b| = sum_b |hits_b - conf_sum_b| / n; one draw at a time (memory O(n))
    values = np.array([np.abs(np.bincount(bins, weights=rng.random(n) < conf, minlength=n_bins) - conf_sum).sum() / n
                       for _ in range(draws)])
    out = {"mean": float(values.mean()), "p90": float(np.percentile(values, 90))}
    if ece is not None:
        out["p_value"] = float((values >= ece - 1e-12).mean())
    return out


def gold_check(fit: Callable[[pd.Series], pd.DataFrame], gold: pd.Series, classes: Sequence,
               seed: int = 0, folds: int = GOLD_CHECK_FOLDS) -> dict[str, float]:
    """How far the output's confidence can be trusted on *this* crowd, measured on its own gold.

    Cross-fitting: the gold items are split into ``folds``; each fold is hidden in turn while the
    rest stays gold (``fit(gold) -> task x class posteriors``, so the rest anchors the fit and,
    when there is enough of it, sets its temperature), and the hidden items' answers and
    confidences are scored against their known labels. Whether a crowd's confidence is calibrated
    depends on how often its workers err together, which the labels alone cannot reveal
    (BENCHMARKS.md, truth inference): this is the check to run before relying on it. Costs
    ``folds`` fits. Returns n, folds, accuracy, mean_confidence, ece (15 bins) and ece_floor, the
    ECE a perfectly calibrated output would show on this many items (``ece_sampling_floor``).
    """
    cls = list(classes)
    fold = np.random.default_rng(seed).permutation(len(gold)) % folds
    probs, truth = [], []
    for f in range(folds):
        hidden = gold[fold == f]
        probs.append(fit(gold[fold != f]).reindex(index=hidden.index, columns=cls).to_numpy(float))
        truth.append(pd.Index(cls).get_indexer(hidden.to_numpy()))
    P, y = np.vstack(probs), np.concatenate(truth)
    ece = expected_calibration_error(P, y)
    return {"n": len(y), "folds": folds, "accuracy": float((P.argmax(axis=1) == y).mean()),
            "mean_confidence": float(P.max(axis=1).mean()), "ece": ece,
            "ece_floor": ece_sampling_floor(P, ece)["mean"]}
