"""Register, gate, force, rollback, lineage and HTTP serving against a real MLflow (SQLite) registry.

Two real but deliberately constant ensembles make the gate's decision deterministic: one always
answers the most frequent gold-test class, the other the least frequent, so the second is worse.
"""

from __future__ import annotations

import importlib
import json
import os
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

from crowdforge.config import load_params
from crowdforge.paths import Paths

AGENTS = ("ingest", "validate", "reputation", "augment", "pretrain", "finetune", "ensemble")


def make_constant(ensemble_dir: Path, class_index: int) -> None:
    """Rewrite every head so the ensemble always predicts ``class_index`` (a real, bad model)."""
    for head in sorted((ensemble_dir / "heads").glob("*.safetensors")):
        tensors = load_file(head)
        bias = np.full_like(tensors["bias"], -10.0)
        bias[class_index] = 10.0
        save_file({"weight": np.zeros_like(tensors["weight"]), "bias": bias}, head)


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_backbone):
    from conftest import write_tiny_params

    from crowdforge.simulate.demo import write_demo_data

    root = tmp_path_factory.mktemp("registry")
    params = load_params(write_tiny_params(root, tiny_backbone))
    paths = Paths(root)
    write_demo_data(paths, params)
    for name in AGENTS:
        importlib.import_module(f"crowdforge.agents.{name}").run(params, paths)
    test = pd.read_parquet(paths.gold).query("split == 'test'")
    counts = test["label"].value_counts()
    assert counts.iloc[0] > counts.iloc[-1], "the tiny gold test split needs unequal class counts"
    classes = list(params.data.classes)
    return params, paths, classes.index(counts.index[0]), classes.index(counts.index[-1])


def test_gate_force_rollback_and_lineage(project):
    from mlflow import MlflowClient

    from crowdforge.agents import register
    from crowdforge.registry.lineage_report import describe
    from crowdforge.registry.promote import PromotionError, promote, rollback

    params, paths, best, worst = project
    name = params.register.model_name

    make_constant(paths.ensemble, best)
    assert register.run(params, paths)["version"] == 1
    first = promote(params, paths)
    assert first["decision"] == "promoted" and first["champion_version"] == 1

    make_constant(paths.ensemble, worst)
    assert register.run(params, paths)["version"] == 2
    second = promote(params, paths)
    assert second["decision"] == "rejected", second["reason"]
    assert second["champion_version"] == 1 and second["challenger_metric"] < second["champion_metric"]

    client = MlflowClient()
    v2 = client.get_model_version(name, "2")
    assert v2.tags["promotion.decision"] == "rejected" and "margin" in v2.tags["promotion.reason"]

    with pytest.raises(PromotionError, match="--force needs --reason"):
        promote(params, paths, force=True)
    forced = promote(params, paths, force=True, reason="hotfix demo")
    assert forced["decision"] == "forced" and forced["champion_version"] == 2
    assert client.get_model_version(name, "2").tags["promotion.reason"].startswith("forced: hotfix demo")

    back = rollback(params, paths, reason="worse on gold")
    assert (back["from_version"], back["to_version"]) == (2, 1)
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    with pytest.raises(PromotionError, match="nothing to roll back to"):
        rollback(params, paths)

    text = describe(params, paths, "1")
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
