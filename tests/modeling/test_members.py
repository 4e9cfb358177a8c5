"""Class balancing of the training weights."""

import numpy as np
import pytest

from crowdforge.modeling.members import class_balance_factors


def test_balanced_factors_equalise_class_mass_and_keep_the_total():
    q = np.array([[1.0, 0.0]] * 9 + [[0.0, 1.0]])
    w = np.ones(10)
    f = class_balance_factors(q, w, "balanced")
    mass = ((w * f)[:, None] * q).sum(0)
    assert mass[0] == pytest.approx(mass[1]) and (w * f).sum() == pytest.approx(w.sum())
    soft = np.array([[0.9, 0.1]] * 9 + [[0.2, 0.8]])  # soft labels: the total weight is kept too
    assert (w * class_balance_factors(soft, w, "balanced")).sum() == pytest.approx(w.sum())
    assert np.allclose(class_balance_factors(q, w, "auto"), f)  # 9 in 10 is imbalanced
    assert np.allclose(class_balance_factors(q, w, "none"), 1.0)
    even = np.array([[1.0, 0.0], [0.0, 1.0]] * 5)
    assert np.allclose(class_balance_factors(even, w, "auto"), 1.0)  # balanced labels: untouched
    with pytest.raises(ValueError, match="class_weight"):
        class_balance_factors(q, w, "sometimes")
