"""The run report on a real (tiny) blackboard: every agent runs in-process, then the page is built."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from crowdforge import io
from crowdforge.config import Params, load_params
from crowdforge.paths import Paths
from crowdforge.reporting import build_report
from crowdforge.reporting.html_report import calibration_bins, gold_test_predictions, probability_confidence
from crowdforge.stages import BUILD_STAGES

AGENTS = BUILD_STAGES
IMAGE = "data:image/png;base64,"


@pytest.fixture()
def tiny_run(tiny_project: Path) -> tuple[Params, Paths]:
    params, paths = load_params(tiny_project / "params.yaml"), Paths(tiny_project)
    for name in AGENTS:
        importlib.import_module(f"crowdforge.agents.{name}").run(params, paths)
    return params, paths


def test_report_has_five_plots_and_the_key_numbers(tiny_run: tuple[Params, Paths]) -> None:
    params, paths = tiny_run
    out = build_report(paths, params)

    assert out == paths.reports / "run_report.html" and out.exists()
    page = out.read_text(encoding="utf-8")
    assert page.count(IMAGE) == 5
    assert "not available" not in page
    assert not re.search(r"""(src|href)=["']https?://""", page)  # self-contained: nothing fetched
    assert not list(paths.reports.glob(".run_report.html.*"))  # atomic write left no temp file

    validate, reputation = io.read_json(paths.report("validate")), io.read_json(paths.report("reputation"))
    pretrain, ensemble = io.read_json(paths.report("pretrain")), io.read_json(paths.report("ensemble"))
    expected = [
        f"{validate['rows_in']:,}", f"{validate['rows_accepted']:,}", f"{validate['rows_quarantined']:,}",
        f"{reputation['gold_check_accuracy']:.3f}",
        f"{pretrain['perplexity_before']:,.2f}", f"{pretrain['perplexity_after']:,.2f}",
        f"{ensemble['test_accuracy']:.3f}", f"{ensemble['test_ece']:.3f}",
    ]
    for value in expected:
        assert f'<div class="v">{value}</div>' in page, value
    # the calibration plot re-predicts the shipped ensemble: its ECE must be the ensemble agent's
    pred = gold_test_predictions(paths, params.data.classes)
    bins = calibration_bins(*probability_confidence(pred, params.data.classes))
    ece = float((bins["n"] / bins["n"].sum() * (bins["accuracy"] - bins["confidence"]).abs()).sum())
    assert ece == pytest.approx(ensemble["test_ece"], abs=1e-6)  # the bins are the ECE's bins


def test_missing_ensemble_report_renders_not_available(tiny_run: tuple[Params, Paths]) -> None:
    params, paths = tiny_run
    paths.report("ensemble").unlink()

    page = build_report(paths, params).read_text(encoding="utf-8")

    assert "not available: reports/ensemble.json not found" in page
    assert page.count(IMAGE) == 4  # the other plots do not depend on the ensemble report
    assert '<div class="v">n/a</div>' in page  # test accuracy / ECE in the header


def test_empty_blackboard_never_crashes(tmp_path: Path) -> None:
    params = load_params(Path(__file__).resolve().parents[2] / "params.yaml")
    page = build_report(Paths(tmp_path), params).read_text(encoding="utf-8")
    assert page.count('<p class="na">not available:') == 5 and IMAGE not in page


def test_the_header_says_which_protections_the_federated_member_had() -> None:
    from crowdforge.reporting.html_report import _subtitle_and_notes

    fed = {"enabled": True, "n_sites": 2, "sites": ["north", "south"], "rounds": 3, "rounds_applied": 2,
           "protections": {"secure_aggregation": "SecAgg+", "gold_gate": "on"}}
    _, notes = _subtitle_and_notes({"federated": fed})
    assert notes == [("federated member: 2 sites (north, south), 2 of 3 rounds applied; secure aggregation: SecAgg+; "
                     "gold gate: on")]
    assert _subtitle_and_notes({"federated": {"enabled": False}})[1] == []
