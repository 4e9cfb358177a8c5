"""The coordinator's round logic on its own (the real runs are in tests/agents/test_federated.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import FedAvg

from crowdforge import io
from crowdforge.federated.job import Job, LocalConfig, MemberSpec
from crowdforge.federated.server_app import HISTORY_FILE, NO_CLIP, GoldGate, InfluenceClipping


class Scorer:
    """Accuracy = the first weight, clipped to [0, 1] (a stand-in for the gold checks)."""

    def __init__(self) -> None:
        self.initial = [np.array([0.5], dtype=np.float32)]

    def __call__(self, arrays: list[np.ndarray]) -> tuple[float, float]:
        a = float(np.clip(arrays[0][0], 0, 1))
        return a, 1 - a


def fit_res(value: float, norm: float, n: int = 10) -> tuple[Any, FitRes]:
    return None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters([np.array([value], dtype=np.float32)]), n,
                        {"update_norm": norm, "site": f"s{value}"})


def gate(tmp_path: Path, enabled: bool = True, steps: tuple[float, ...] = (1.0,)) -> GoldGate:
    job = Job(MemberSpec("b", 2), LocalConfig(), ("a", "b"), rounds=3, n_sites=2, secagg=False, gold_gate=enabled,
              server_steps=steps, job_dir=str(tmp_path))
    inner = FedAvg(fraction_evaluate=0.0)
    clipping = InfluenceClipping(inner, 2)
    return GoldGate(clipping, job, Scorer())


def test_a_round_that_scores_worse_is_not_applied_and_every_round_is_logged(tmp_path: Path) -> None:
    g = gate(tmp_path)
    g.round_started = g.clip_norm = 0.0
    params, _ = g.aggregate_fit(1, [fit_res(0.7, 1.0), fit_res(0.9, 3.0)], [])
    assert parameters_to_ndarrays(params)[0][0] == pytest.approx(0.8)
    params, _ = g.aggregate_fit(2, [fit_res(0.1, 1.0), fit_res(0.3, 1.0)], [])
    assert parameters_to_ndarrays(params)[0][0] == pytest.approx(0.8)  # 0.2 would be worse: kept the previous
    history = io.read_json(tmp_path / HISTORY_FILE)["rounds"]
    assert [r["applied"] for r in history] == [True, False]
    assert history[1]["reason"] == "no step lowers the NLL on the gold checks"
    assert all("gold_accuracy" in s for s in history[0]["sites"])  # secagg off: each site's weights scored


def test_the_gate_takes_the_step_along_the_update_with_the_lowest_gold_nll(tmp_path: Path) -> None:
    g = gate(tmp_path, steps=(0.5, 1.0, 2.0, 4.0))
    g.score = lambda arrays: (0.0, abs(float(arrays[0][0]) - 1.0))  # the NLL is lowest at weight 1.0
    g.round_started = g.clip_norm = 0.0
    params, _ = g.aggregate_fit(1, [fit_res(0.6, 1.0), fit_res(0.6, 1.0)], [])  # from 0.5, an update of +0.1
    assert parameters_to_ndarrays(params)[0][0] == pytest.approx(0.9)  # 4 steps: nearest to 1.0
    params, _ = g.aggregate_fit(2, [fit_res(1.1, 1.0), fit_res(1.1, 1.0)], [])  # +0.2 overshoots 1.0
    assert parameters_to_ndarrays(params)[0][0] == pytest.approx(1.0)  # half a step lands on it
    history = io.read_json(tmp_path / HISTORY_FILE)["rounds"]
    assert [r["step"] for r in history] == [4.0, 0.5]
    assert [c["step"] for c in history[0]["candidates"]] == [0.5, 1.0, 2.0, 4.0]


def test_without_the_gate_a_worse_round_is_applied(tmp_path: Path) -> None:
    g = gate(tmp_path, enabled=False)
    g.round_started = g.clip_norm = 0.0
    params, _ = g.aggregate_fit(1, [fit_res(0.1, 1.0), fit_res(0.3, 1.0)], [])
    assert parameters_to_ndarrays(params)[0][0] == pytest.approx(0.2)


def test_clipping_follows_the_median_norm_the_sites_reported(tmp_path: Path) -> None:
    clipping = InfluenceClipping(FedAvg(fraction_evaluate=0.0), 3)
    assert clipping.next_norm() == NO_CLIP  # round 1: nothing reported yet
    clipping.aggregate_fit(1, [fit_res(0.5, 1.0), fit_res(0.5, 2.0), fit_res(0.5, 50.0)], [])
    assert clipping.next_norm() == 2.0  # one site's outsized update does not set the bound
