import pytest

from crowdforge.registry.promote import decide


def test_first_version_becomes_champion():
    assert decide(0.5, None, 0.01) == (True, "no champion yet")


@pytest.mark.parametrize(("challenger", "champion", "margin", "expected"), [
    (0.90, 0.80, 0.01, True),
    (0.805, 0.80, 0.01, False),   # better, but not by the margin
    (0.81, 0.80, 0.01, True),     # exactly the margin is enough
    (0.70, 0.80, 0.0, False),     # a worse challenger is refused
])
def test_gate_needs_the_margin(challenger, champion, margin, expected):
    promoted, reason = decide(challenger, champion, margin)
    assert promoted is expected
    assert f"{champion:.4f}" in reason and str(margin) in reason


def test_gate_refuses_what_does_not_beat_the_majority_baseline():
    promoted, reason = decide(0.47, None, 0.01, baseline=0.467)  # first version, one class for everything
    assert promoted is False and "majority-class baseline" in reason
    promoted, _ = decide(0.60, 0.50, 0.01, baseline=0.467)
    assert promoted is True
    promoted, reason = decide(0.47, 0.30, 0.01, baseline=0.467)  # beats a bad champion, not the baseline
    assert promoted is False and "baseline" in reason
