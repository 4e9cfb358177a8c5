from __future__ import annotations

import numpy as np
import pytest

from crowdforge.truth.calibration import ece_sampling_floor, expected_calibration_error


def test_ece_sampling_floor_matches_resampled_ece_and_flags_miscalibration() -> None:
    rng = np.random.default_rng(3)
    conf = rng.uniform(0.5, 1.0, 300)
    probs = np.c_[conf, 1 - conf]
    # the floor is the mean ECE (as expected_calibration_error computes it) of labels drawn from the confidences
    resampled = [expected_calibration_error(probs, (rng.random(300) >= conf).astype(int)) for _ in range(400)]
    floor = ece_sampling_floor(probs, draws=2000)
    assert floor["mean"] == pytest.approx(np.mean(resampled), rel=0.08)
    assert floor["p90"] > floor["mean"] > 0.01  # 300 items: far from 0 even when calibrated
    big = np.repeat(probs, 20, axis=0)
    assert ece_sampling_floor(big)["mean"] < floor["mean"] / 3  # shrinks ~ 1/sqrt(n)
    calibrated_y = (rng.random(300) >= conf).astype(int)
    assert ece_sampling_floor(probs, expected_calibration_error(probs, calibrated_y))["p_value"] > 0.05
    overconfident = np.c_[np.full(300, 0.99), np.full(300, 0.01)]
    coin = rng.integers(0, 2, 300)
    e = expected_calibration_error(overconfident, coin)
    assert ece_sampling_floor(overconfident, e)["p_value"] == 0.0
