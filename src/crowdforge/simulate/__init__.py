"""Simulated contributors and data: the demo data set and the crowds that benchmarks need.

- :mod:`crowdforge.simulate.text`: a seeded generator of 3-class sentiment sentences whose label
  depends on the words in a learnable but non-trivial way (negation, contrast).
- :mod:`crowdforge.simulate.crowd`: a crowd of experts, ordinary, careless, spammers, adversaries,
  biased contributors and a copying group labelling items, with a truth table.
- :mod:`crowdforge.simulate.demo`: writes the demo ``data/raw`` tree (with malformed rows).
"""

from crowdforge.simulate.crowd import (
    CrowdMix,
    CrowdSimulation,
    simulate_crowd,
    simulate_crowd_from_file,
)
from crowdforge.simulate.demo import write_demo_data
from crowdforge.simulate.text import generate_texts

__all__ = [
    "CrowdMix",
    "CrowdSimulation",
    "generate_texts",
    "simulate_crowd",
    "simulate_crowd_from_file",
    "write_demo_data",
]
