"""Differential privacy of a federated member: sample-level DP-SGD at every site, accounted with RDP.

Each site trains with DP-SGD (Abadi et al. 2016, "Deep Learning with Differential Privacy"): every
example's gradient is clipped to ``max_grad_norm``, batches are Poisson samples (rate ``q``) and
Gaussian noise of ``noise_multiplier x max_grad_norm`` is added to each batch's gradient sum. The
privacy loss of all the site's steps over every round is accounted with Renyi DP (Mironov 2017;
Opacus's ``RDPAccountant``). A site's records are only in its own updates, so the member's
(epsilon, delta) is the largest over the sites. Site-level DP (clipping whole updates and noising
their sum) was not chosen: with five sites the noise needed for epsilon = 8 is hundreds of times
the norm of the update (BENCHMARKS.md).
"""

from __future__ import annotations


def noise_multiplier(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The smallest noise multiplier whose ``steps`` DP-SGD steps at ``sample_rate`` stay within the budget."""
    from opacus.accountants.utils import get_noise_multiplier

    return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                      sample_rate=sample_rate, steps=max(int(steps), 1), accountant="rdp"))


def epsilon_spent(noise: float, delta: float, sample_rate: float, steps: int) -> float:
    """Epsilon after ``steps`` DP-SGD steps with this noise and sampling rate (RDP accountant)."""
    from opacus.accountants import RDPAccountant

    if steps <= 0:
        return 0.0
    acc = RDPAccountant()
    acc.history = [(float(noise), float(sample_rate), int(steps))]
    return float(acc.get_epsilon(delta=delta))
