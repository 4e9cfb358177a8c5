"""The market on a real registry: register attaches a specification, then search, export and reuse
through the command line (a tiny pipeline, real MLflow on SQLite, the packaged MiniLM for specs)."""

from __future__ import annotations

import json
import zipfile

import pandas as pd
import pytest
from typer.testing import CliRunner

from crowdforge.cli import app
from crowdforge.config import load_params
from crowdforge.paths import Paths

runner = CliRunner()
PRODUCTS = [f"acme {k} {n} gb smartphone, dual sim, model ac-{n * 7}" for k, n in
            zip(["pro", "lite", "max"] * 20, range(100, 160), strict=False)]


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_backbone):
    from conftest import run_tiny_pipeline

    root = tmp_path_factory.mktemp("market")
    run_tiny_pipeline(root, tiny_backbone, extra={"market": {"spec": True}})
    return root


def cli(root, *args):
    result = runner.invoke(app, [*map(str, args), "--root", str(root), "--params", str(root / "params.yaml")])
    return result


def test_register_attaches_a_specification(project):
    from mlflow import MlflowClient

    report = json.loads((project / "reports" / "register.json").read_text())
    tags = report["specification"]
    assert tags["market.task"] == "text-classification" and tags["market.language"] == "en"
    assert json.loads(tags["market.classes"]) == ["negative", "neutral", "positive"]
    version = MlflowClient().get_model_version("crowdforge", "1")
    assert version.tags["market.domain"] == "general"
    files = {f.path for f in MlflowClient().list_artifacts(version.run_id, "spec")}
    assert {"spec/rkme.json", "spec/spec.json", "spec/semantic_specification.json",
            "spec/embedding_head.safetensors", "spec/embedding_head.json"} <= files


def test_search_finds_the_model_for_its_own_kind_of_text_and_refuses_others(project, tmp_path):
    from crowdforge.simulate.text import generate_texts

    mine = tmp_path / "mine.txt"
    mine.write_text("\n".join(generate_texts(80, seed=123)["text"]))
    found = cli(project, "market", "search", "--texts", mine)
    assert found.exit_code == 0, found.output
    assert "best match: models:/crowdforge/1" in found.output
    products = tmp_path / "products.csv"
    pd.DataFrame({"text": PRODUCTS}).to_csv(products, index=False)
    other = cli(project, "market", "search", "--texts", products)
    assert other.exit_code == 0 and "no suitable model" in other.output, other.output
    classes = cli(project, "market", "search", "--texts", mine, "--classes", "spam,ham")
    assert "left out models:/crowdforge/1: classes" in classes.output and "no suitable model" in classes.output
    bad = cli(project, "market", "search", "--texts", tmp_path / "missing.txt")
    assert bad.exit_code == 2 and "no such file" in bad.output


def test_export_a_learnware_zip_and_search_it(project, tmp_path):
    from crowdforge.simulate.text import generate_texts

    out = tmp_path / "zips" / "crowdforge-1.zip"
    done = cli(project, "market", "export", "1", "--out", out)
    assert done.exit_code == 0, done.output
    with zipfile.ZipFile(out) as zf:
        names = set(zf.namelist())
    assert {"learnware.yaml", "__init__.py", "rkme.json", "spec.json", "embedding_head.safetensors",
            "ensemble/ensemble.json"} <= names
    texts = tmp_path / "mine.txt"
    texts.write_text("\n".join(generate_texts(60, seed=321)["text"]))
    both = cli(project, "market", "search", "--texts", texts, "--zips", out.parent)
    assert both.exit_code == 0 and out.name in both.output and "2 models with a specification" in both.output
    missing = cli(project, "market", "export", "7", "--out", tmp_path / "x.zip")
    assert missing.exit_code == 2 and "no version '7'" in missing.output


def test_reuse_without_and_with_labels_and_register_the_result(project, tmp_path):
    from mlflow import MlflowClient

    from crowdforge.modeling.inference import load_ensemble
    from crowdforge.simulate.text import generate_texts

    data = generate_texts(60, seed=7)
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(data["text"]))
    average = cli(project, "market", "reuse", "--texts", texts, "--out", tmp_path / "avg", "--register", "reused")
    assert average.exit_code == 0, average.output
    predictions = pd.read_csv(tmp_path / "avg" / "predictions.csv")
    assert len(predictions) == 60 and set(predictions["label"]) <= {"negative", "neutral", "positive"}
    reused = load_ensemble(tmp_path / "avg" / "ensemble")
    assert reused.classes == ["negative", "neutral", "positive"]
    version = MlflowClient().get_model_version("reused", "1")
    assert version.tags["reused_from"] == "models:/crowdforge/1" and version.tags["reuse_method"] == "average"
    assert json.loads(version.tags["market.classes"]) == ["negative", "neutral", "positive"]  # the market finds it

    labels = tmp_path / "labels.csv"
    data[data["label"] != "neutral"].iloc[:30].to_csv(labels, index=False)
    pruned = cli(project, "market", "reuse", "--texts", texts, "--out", tmp_path / "pruned", "--method", "prune",
                 "--labels", labels, "--classes", "negative,positive")
    assert pruned.exit_code == 0, pruned.output
    record = json.loads((tmp_path / "pruned" / "reuse.json").read_text())
    market = ["models:/crowdforge/1", "models:/reused/1"]  # the registered reuse is on the market now
    assert sorted(record["sources"]) == market and record["kept"] and set(record["kept"]) <= set(market)
    assert record["classes"] == ["negative", "positive"]
    augmented = cli(project, "market", "reuse", "--texts", texts, "--out", tmp_path / "aug", "--labels", labels,
                    "--classes", "negative,positive")  # augment: the default with labels
    assert augmented.exit_code == 0, augmented.output
    record = json.loads((tmp_path / "aug" / "reuse.json").read_text())
    assert record["method"] == "augment" and record["augment"]["labels"] == 30
    model = json.loads((tmp_path / "aug" / "augment.json").read_text())
    assert sorted(model["sources"]) == market and model["classes"] == ["negative", "positive"]
    assert set(pd.read_csv(tmp_path / "aug" / "predictions.csv")["label"]) <= {"negative", "positive"}
    refused = cli(project, "market", "reuse", "--texts", texts, "--out", tmp_path / "x", "--labels", labels,
                  "--register", "r2")
    assert refused.exit_code == 2 and "not an ensemble folder" in refused.output
    select = cli(project, "market", "reuse", "--texts", texts, "--out", tmp_path / "sel", "--method", "select")
    assert select.exit_code == 0 and json.loads((tmp_path / "sel" / "reuse.json").read_text())["routed"]
    no_labels = cli(project, "market", "reuse", "--texts", texts, "--out", tmp_path / "x", "--method", "prune")
    assert no_labels.exit_code == 2 and "needs --labels" in no_labels.output


def test_a_registered_model_is_a_backbone_to_fine_tune(project):
    import dataclasses

    import numpy as np
    from transformers import AutoModel

    from crowdforge.agents import pretrain
    from crowdforge.market.reuse import registry_backbone
    from crowdforge.modeling.inference import load_ensemble

    params, paths = load_params(project / "params.yaml"), Paths(project)
    folder = registry_backbone("models:/crowdforge@challenger", params, paths)
    ens = load_ensemble(next((paths.cache / "market" / "ensembles").glob("crowdforge-1-*")))
    heaviest = max((m for m in ens.members if m.encoder), key=lambda m: m.ensemble_weight).encoder
    loaded = AutoModel.from_pretrained(folder)
    for (name, a), b in zip(loaded.state_dict().items(), ens.encoders[heaviest].state_dict().values(), strict=True):
        assert np.allclose(a.numpy(), b.numpy()), name
    reuse = dataclasses.replace(params, pretrain=dataclasses.replace(params.pretrain, backbone="models:/crowdforge/1"))
    report = pretrain.run(reuse, paths)
    assert report["steps"] > 0 and "models:/crowdforge/1" in report["summary_md"]
    with pytest.raises(ValueError, match="no version '9'"):
        registry_backbone("models:/crowdforge/9", params, paths)


def test_a_version_registered_without_a_specification_gets_one(project, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    from crowdforge.agents.register import log_pyfunc
    from crowdforge.registry.tracking import connect

    params, paths = load_params(project / "params.yaml"), Paths(project)
    with mlflow.start_run(experiment_id=connect(params, paths)):  # what a version from before specifications is
        log_pyfunc(paths.ensemble, list(params.data.classes), "legacy")
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(pd.read_parquet(paths.labels)["text"].iloc[:80]))
    before = cli(project, "market", "search", "--texts", texts)
    assert "have no specification" in before.output and "models:/legacy/1" in before.output
    done = cli(project, "market", "specify", "1", "--model", "legacy", "--texts", paths.labels)
    assert done.exit_code == 0, done.output
    assert json.loads(MlflowClient().get_model_version("legacy", "1").tags["market.classes"]) == [
        "negative", "neutral", "positive"]
    after = cli(project, "market", "search", "--texts", texts)
    assert "\nlegacy " in after.output  # a row of the table
    assert "legacy" not in after.output.partition("have no specification")[2]
    again = cli(project, "market", "specify", "1", "--model", "legacy", "--texts", paths.labels)
    assert again.exit_code == 2 and "already has a specification" in again.output
