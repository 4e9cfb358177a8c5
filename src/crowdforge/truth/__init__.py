"""Truth inference: estimate each task's true label (and each worker's reliability) from many labels.

Estimators follow Toloka's crowd-kit: sklearn-like (``fit(data) -> self``, fitted attributes end in
``_``, ``fit_predict``, ``fit_predict_proba``) over a long DataFrame with columns
``task, worker, label``. :class:`HierarchicalDawidSkene` is the default (``METHODS["auto"]``).
"""

from crowdforge.truth.constrained import MACE, OneCoinDawidSkene
from crowdforge.truth.dawid_skene import DawidSkene
from crowdforge.truth.hierarchical import HierarchicalDawidSkene
from crowdforge.truth.majority_vote import MajorityVote

# CLI / params names -> estimator classes ("auto" is the default, the best all-rounder)
METHODS = {
    "auto": HierarchicalDawidSkene,
    "hierarchical": HierarchicalDawidSkene,
    "dawid_skene": DawidSkene,
    "one_coin": OneCoinDawidSkene,
    "mace": MACE,
    "majority_vote": MajorityVote,
}

__all__ = ["MACE", "METHODS", "DawidSkene", "HierarchicalDawidSkene", "MajorityVote", "OneCoinDawidSkene"]
