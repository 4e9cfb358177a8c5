"""One definition of the scores every report and the gate use."""

import numpy as np
import pytest

from crowdforge.metrics import evaluate, headline_metric, is_imbalanced, majority_baseline


def test_majority_baseline_and_headline_on_an_imbalanced_split():
    y = np.array([0] * 88 + [1] * 12)  # 12 % matches
    assert is_imbalanced(y, 2) and headline_metric(y, 2) == "macro_f1"
    base = majority_baseline(y, 2)
    assert base["class_index"] == 0 and base["accuracy"] == pytest.approx(0.88)
    assert base["macro_f1"] == pytest.approx((2 * 0.88 / 1.88) / 2)
    always_no = evaluate(y, np.zeros(100, dtype=int), 2)
    assert always_no["accuracy"] == pytest.approx(0.88) and always_no["beats_majority_by"] == pytest.approx(0.0)
    some = evaluate(y, np.r_[np.zeros(88, dtype=int), np.ones(12, dtype=int)], 2)
    assert some["macro_f1"] == 1.0 and some["per_class_f1"] == [1.0, 1.0] and some["beats_majority_by"] > 0


def test_balanced_split_is_judged_by_accuracy():
    y = np.array([0, 1, 2] * 10)
    assert not is_imbalanced(y, 3) and headline_metric(y, 3) == "accuracy"
