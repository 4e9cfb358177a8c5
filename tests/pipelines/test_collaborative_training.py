"""The whole Prefect flow on tiny data with a tiny random BERT, against real Prefect and MLflow."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from crowdforge import io
from crowdforge.config import load_params
from crowdforge.paths import Paths
from crowdforge.stages import BUILD_STAGES

HEAVY = BUILD_STAGES


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    from prefect.testing.utilities import prefect_test_harness

    os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(tmp_path_factory.mktemp("prefect-results"))
    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.mark.slow
def test_flow_end_to_end_then_cached(tiny_project: Path, prefect_api) -> None:
    from mlflow import MlflowClient

    from crowdforge.registry.predict import predict_texts
    from crowdforge.registry.tracking import connect
    from pipelines.collaborative_training import build_flow

    params_file = tiny_project / "params.yaml"
    params, paths = load_params(params_file), Paths(tiny_project)
    flow = build_flow(params)

    first = flow(params_file=str(params_file), root=str(tiny_project))
    stages = {row["stage"]: row for row in first["stages"]}
    assert set(HEAVY) <= set(stages) and {"register", "promote"} <= set(stages)
    assert not any(stages[s]["cached"] for s in HEAVY)

    validate = io.read_json(paths.report("validate"))
    assert validate["rows_in"] == validate["rows_accepted"] + validate["rows_quarantined"]
    assert validate["rows_quarantined"] > 0  # the demo data holds malformed rows on purpose
    ensemble = io.read_json(paths.report("ensemble"))
    assert 0.0 <= ensemble["test_accuracy"] <= 1.0 and ensemble["test_n"] == params.demo.n_gold_test

    # the agents' progress reached the Prefect UI as progress artifacts, complete
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    keys = ["crowdforge-progress-pretrain", "crowdforge-progress-head-a", "crowdforge-progress-ensemble"]
    with get_client(sync_client=True) as prefect_client:
        shown = prefect_client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
    assert {a.key for a in shown} == set(keys) and all(a.data == 100.0 for a in shown), [(a.key, a.data) for a in shown]

    connect(params, paths)
    client = MlflowClient()
    name = params.register.model_name
    challenger = client.get_model_version_by_alias(name, "challenger")
    champion = client.get_model_version_by_alias(name, "champion")
    assert str(challenger.version) == str(champion.version) == "1"
    assert challenger.tags["promotion.decision"] == "promoted"
    assert challenger.tags["test_set_hash"] == ensemble["test_set_hash"]
    assert challenger.tags["prefect_flow_run_id"] == first["flow_run_id"]
    run = client.get_run(challenger.run_id)
    assert {"git_commit", "git_dirty", "data.data/raw"} <= set(run.data.tags)
    assert run.data.metrics["validate.rows_in"] == validate["rows_in"]

    pred = predict_texts(params, paths, ["the pasta was not good at all", "great phone, very fast"])
    probs = pred[[f"prob_{c}" for c in params.data.classes]].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert set(pred["label"]) <= set(params.data.classes)

    # Nothing changed: every heavy stage is reused, no new version, the gate keeps the champion.
    second = flow(params_file=str(params_file), root=str(tiny_project))
    again = {row["stage"]: row for row in second["stages"]}
    assert all(again[s]["cached"] for s in HEAVY), {s: again[s]["cached"] for s in HEAVY}
    assert again["register"]["metrics"]["new_version"] is False
    assert second["promotion"]["decision"] == "kept"
    assert len(client.search_model_versions(f"name = '{name}'")) == 1

    # A changed knob reruns the stages downstream of it only.
    third = flow(params_file=str(params_file), root=str(tiny_project), overrides={"ensemble.calibrate": False})
    rerun = {row["stage"]: row["cached"] for row in third["stages"]}
    assert rerun["pretrain"] and rerun["finetune"] and not rerun["ensemble"]
