"""Truth inference: estimate each task's true label (and each worker's reliability) from many labels.

Estimators follow Toloka's crowd-kit: sklearn-like (``fit(data) -> self``, fitted attributes end in
``_``, ``fit_predict``, ``fit_predict_proba``) over a long DataFrame with columns
``task, worker, label``.
"""

from crowdforge.truth.dawid_skene import DawidSkene
from crowdforge.truth.majority_vote import MajorityVote

__all__ = ["DawidSkene", "MajorityVote"]
