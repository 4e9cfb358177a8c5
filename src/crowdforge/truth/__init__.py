"""Truth inference: estimate each task's true label (and each worker's reliability) from many labels.

Estimators follow Toloka's crowd-kit: sklearn-like over a long DataFrame with columns
``task, worker, label``, all with one contract, ``fit(data, gold=None, worker_prior=None) -> self``,
and the same fitted attributes (``probas_``, ``labels_``, ``priors_``, ``errors_``, ``counts_``,
``worker_accuracy_``, ``worker_accuracy_sd_``, ``worker_n_labels_``). :data:`METHODS` is the one
registry of names (``aggregate --method``, ``reputation.method``, the benchmark): a new method is
one module plus one line there. ``auto`` (:class:`StackedDawidSkene`) is the default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from crowdforge.truth.constrained import MACE, OneCoinDawidSkene, PooledOneCoin
from crowdforge.truth.dawid_skene import DawidSkene
from crowdforge.truth.majority_vote import MajorityVote
from crowdforge.truth.stacking import StackedDawidSkene

# name -> estimator class, with what the method is, for `--help` and error messages
METHODS: dict[str, tuple[Callable[..., Any], str]] = {
    "auto": (StackedDawidSkene, "the Dawid-Skene family stacked by held-out label likelihood, per crowd"),
    "dawid_skene": (DawidSkene, "confusion matrix per worker, shrunk toward one-coin (reputation.shrinkage)"),
    "one_coin": (OneCoinDawidSkene, "one accuracy per worker"),
    "mace": (MACE, "per-worker spamming probability and strategy"),
    "majority_vote": (MajorityVote, "plain vote shares"),
}


def make_estimator(method: str, classes: Sequence[Hashable] | None = None, **options: Any) -> Any:
    """The estimator registered as ``method``, given the ``options`` it accepts (others are ignored:
    a common set of knobs such as ``n_iter`` or ``smoothing`` serves every method)."""
    if method not in METHODS:
        raise ValueError(f"unknown truth-inference method {method!r}; choose from {', '.join(METHODS)}")
    cls = METHODS[method][0]
    accepted = {f.name for f in dataclasses.fields(cls) if f.init}
    return cls(classes=classes, **{k: v for k, v in options.items() if k in accepted})


__all__ = ["MACE", "METHODS", "DawidSkene", "MajorityVote", "OneCoinDawidSkene", "PooledOneCoin",
           "StackedDawidSkene", "make_estimator"]
