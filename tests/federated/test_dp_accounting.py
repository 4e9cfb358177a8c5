from __future__ import annotations

import pytest

from crowdforge.federated.dp_accounting import epsilon_spent, noise_multiplier


@pytest.mark.parametrize("target", [1.0, 8.0])
def test_calibrated_noise_spends_at_most_the_target_and_more_steps_spend_more(target: float) -> None:
    sigma = noise_multiplier(target, 1e-5, sample_rate=0.05, steps=200)
    spent = epsilon_spent(sigma, 1e-5, 0.05, 200)
    assert spent <= target * 1.02 and spent >= target * 0.8
    assert epsilon_spent(sigma, 1e-5, 0.05, 100) < spent
    assert epsilon_spent(sigma, 1e-5, 0.05, 0) == 0.0
