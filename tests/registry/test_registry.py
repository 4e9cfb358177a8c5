"""Register, gate, force, rollback, lineage and HTTP serving against a real MLflow (SQLite) registry.

The trained tiny ensemble, a deliberately constant one (always the most frequent gold-test class:
exactly the majority-class baseline) and a shifted copy of the trained one (different files, the
same predictions) make the gate's decisions deterministic.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load_file, save_file

from crowdforge.paths import Paths
from crowdforge.stages import BUILD_STAGES

AGENTS = BUILD_STAGES


def make_constant(ensemble_dir: Path, class_index: int) -> None:
    """Rewrite every head so the ensemble always predicts ``class_index`` (a real, bad model)."""
    for head in sorted((ensemble_dir / "heads").glob("*.safetensors")):
        tensors = load_file(head)
        bias = np.full_like(tensors["bias"], -10.0)
        bias[class_index] = 10.0
        save_file({"weight": np.zeros_like(tensors["weight"]), "bias": bias}, head)


def shift(ensemble_dir: Path, offset: float) -> None:
    """Add ``offset`` to every head's bias for every class: new files, the same probabilities (a softmax
    does not see a constant added to all logits), so the same decisions."""
    for head in sorted((ensemble_dir / "heads").glob("*.safetensors")):
        tensors = load_file(head)
        save_file({"weight": tensors["weight"], "bias": tensors["bias"] + offset}, head)


def use_ensemble(paths: Paths, source: Path) -> None:
    shutil.rmtree(paths.ensemble)
    shutil.copytree(source, paths.ensemble)


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_backbone):
    from conftest import run_tiny_pipeline

    root = tmp_path_factory.mktemp("registry")
    params, paths = run_tiny_pipeline(root, tiny_backbone, AGENTS)
    test = pd.read_parquet(paths.gold).query("split == 'test'")
    counts = test["label"].value_counts()
    assert counts.iloc[0] > counts.iloc[-1], "the tiny gold test split needs unequal class counts"
    classes = list(params.data.classes)
    trained = root / "trained-ensemble"
    shutil.copytree(paths.ensemble, trained)
    return params, paths, classes.index(counts.index[0]), trained


def test_gate_force_rollback_and_lineage(project):
    from mlflow import MlflowClient

    from crowdforge.agents import register
    from crowdforge.registry.lineage_report import describe
    from crowdforge.registry.promote import PromotionError, promote, rollback

    params, paths, majority, trained = project
    name = params.register.model_name

    # a model that always answers the majority class is refused, even as the first version
    make_constant(paths.ensemble, majority)
    assert register.run(params, paths)["version"] == 1
    constant = promote(params, paths)
    assert constant["decision"] == "refused" and "majority-class baseline" in constant["reason"], constant
    assert constant["champion_version"] is None
    assert constant["challenger_metric"] == pytest.approx(constant["majority_baseline_metric"])

    use_ensemble(paths, trained)
    assert register.run(params, paths)["version"] == 2
    first = promote(params, paths)
    assert first["decision"] == "promoted" and first["champion_version"] == 2, first
    assert first["reused_ensemble_predictions"] is True  # the ensemble stage's own test predictions
    assert first["challenger_metric"] == pytest.approx(
        json.loads(paths.report("ensemble").read_text())[f"test_{first['metric']}"])

    shift(paths.ensemble, 1.0)  # other files (a new version, scored by the registry), same answers
    assert register.run(params, paths)["version"] == 3
    second = promote(params, paths)
    assert second["decision"] == "rejected", second["reason"]
    assert second["reused_ensemble_predictions"] is False
    assert second["champion_version"] == 2 and second["challenger_metric"] == pytest.approx(second["champion_metric"])

    client = MlflowClient()
    v3 = client.get_model_version(name, "3")
    assert v3.tags["promotion.decision"] == "rejected" and "margin" in v3.tags["promotion.reason"]

    with pytest.raises(PromotionError, match="--force needs --reason"):
        promote(params, paths, force=True)
    forced = promote(params, paths, force=True, reason="hotfix demo")
    assert forced["decision"] == "forced" and forced["champion_version"] == 3
    assert client.get_model_version(name, "3").tags["promotion.reason"].startswith("forced: hotfix demo")

    back = rollback(params, paths, reason="worse on gold")
    assert (back["from_version"], back["to_version"]) == (3, 2)
    assert str(client.get_model_version_by_alias(name, "champion").version) == "2"
    with pytest.raises(PromotionError, match="nothing to roll back to"):
        rollback(params, paths)

    text = describe(params, paths, "2")
    for needle in ("git_commit", "test_set_hash", "validation", "reputation", "data.labels.md5", "dvc repro"):
        assert needle in text

    # the same ensemble registered again keeps its version
    assert register.run(params, paths)["new_version"] is False


def test_gate_refuses_different_test_data(project):
    from crowdforge.registry.promote import promote

    params, paths, _, _ = project
    gold = pd.read_parquet(paths.gold)
    original = gold.copy()
    try:
        idx = gold.index[gold["split"] == "test"][0]
        gold.loc[idx, "text"] = gold.loc[idx, "text"] + " changed"
        gold.to_parquet(paths.gold, index=False)
        out = promote(params, paths)
        assert out["decision"] == "refused" and "test split" in out["reason"]
    finally:
        original.to_parquet(paths.gold, index=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_serve_champion_over_http(project):
    from crowdforge.registry.tracking import resolve_tracking_uri

    params, paths, _, _ = project
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": resolve_tracking_uri(params.register.tracking_uri, paths.root),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
    proc = subprocess.Popen([mlflow_bin, "models", "serve", "-m", f"models:/{params.register.model_name}@champion",
                             "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
                time.sleep(1)
        body = json.dumps({"dataframe_split": {"columns": ["text"], "data": [["the soup was not good"], ["fine"]]}})
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
        out = json.loads(urllib.request.urlopen(req, timeout=60).read())
        rows = out["predictions"]
        assert len(rows) == 2
        assert all(r["label"] in params.data.classes for r in rows)
        assert all(abs(sum(r[f"prob_{c}"] for c in params.data.classes) - 1) < 1e-4 for r in rows)
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
