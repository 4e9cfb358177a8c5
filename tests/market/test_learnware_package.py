"""Learnware zips: the learnware package's own loader, checkers and easy market accept them, and the
loaded model predicts what the ensemble predicts. Every file the package writes stays under tmp."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import random_ensemble

from crowdforge.market.learnware_home import use_learnware_home
from crowdforge.market.learnware_package import (
    fit_embedding_head,
    learnware_semantic_spec,
    load_learnware_zip,
    write_learnware_zip,
)
from crowdforge.modeling.inference import Ensemble, softmax

CLASSES = ["negative", "neutral", "positive"]
TEXTS = ["great service and fast delivery", "awful", "it was okay I guess", "", "love it " * 40,
         "never again", "fine", "the parcel arrived broken", "five stars", "meh", "refund please", "superb"]


def _ensemble(backbone: Path) -> Ensemble:
    return random_ensemble(backbone, CLASSES)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _semantic(**changes: Any) -> dict[str, Any]:
    args = {"name": "reviews sentiment", "description": "Sentiment of product reviews, from crowd labels.",
            "classes": CLASSES, "domain": "Business", "licence": "Apache-2.0", "language": "en", **changes}
    return learnware_semantic_spec(**args)


@pytest.mark.parametrize(("change", "field"), [
    ({"domain": "Reviews"}, "domain"),
    ({"domain": []}, "domain"),
    ({"licence": "WTFPL"}, "licence"),
    ({"language": "english!"}, "language"),
    ({"classes": ["only"]}, "classes"),
    ({"classes": ["a", "a"]}, "classes"),
    ({"name": " "}, "name"),
    ({"description": ""}, "description"),
])
def test_bad_field_is_named(change: dict[str, Any], field: str) -> None:
    # first in the file: run alone, it checks against learnware/config.py without importing the package
    with pytest.raises(ValueError, match=f"^{field}:"):
        _semantic(**change)


@pytest.fixture(scope="module")
def learnware_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = use_learnware_home(tmp_path_factory.mktemp("learnware-home"))
    from learnware.config import C

    for key in ("root_path", "market_root_path", "database_path", "stdout_path", "cache_path"):
        assert Path(C[key]).is_relative_to(root), key
    assert C.database_url == f"sqlite:///{root / 'database'}"
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_backbone: Path, learnware_root: Path) -> dict[str, Any]:
    import torch
    from learnware.specification import RKMETableSpecification

    tmp = tmp_path_factory.mktemp("package")
    ens = _ensemble(tiny_backbone)
    ens.save(tmp / "ensemble")
    rng = np.random.default_rng(1)
    torch.manual_seed(0)
    spec = RKMETableSpecification(gamma=1.0, cuda_idx=-1)
    spec.generate_stat_spec_from_data(_unit(rng.normal(size=(40, 384))), K=5)
    spec.save(str(tmp / "rkme.json"))
    # stand-ins for crowdforge.market.features.embed(TEXTS): the head only has to reproduce the ensemble on them
    emb = _unit(rng.normal(size=(len(TEXTS), 384)))
    probs = ens.predict_proba(TEXTS)
    head = fit_embedding_head(emb, probs)
    semantic = _semantic()
    out = write_learnware_zip(tmp / "ensemble", tmp / "rkme.json", semantic, tmp / "out" / "reviews.zip",
                              embedding_head=head)
    return {"tmp": tmp, "ens": ens, "z": spec.get_z(), "emb": emb, "probs": probs, "head": head,
            "semantic": semantic, "zip": out}


def test_zip_layout_is_complete_reproducible_and_atomic(built: dict[str, Any]) -> None:
    out: Path = built["zip"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["reviews.zip"]  # no temporary file left behind
    with zipfile.ZipFile(out) as zf:
        names = set(zf.namelist())
        requirements = zf.read("requirements.txt").decode().split()
        environment = zf.read("environment.yaml").decode()
    assert {"learnware.yaml", "__init__.py", "rkme.json", "semantic_specification.json", "requirements.txt",
            "environment.yaml", "embedding_head.safetensors", "ensemble/ensemble.json",
            "code/crowdforge/modeling/inference.py", "code/crowdforge/modeling/tokens.py"} <= names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert [r.split("==")[0] for r in requirements] == ["torch", "transformers", "numpy", "pandas", "scikit-learn",
                                                        "skops", "safetensors"]
    assert all("+" not in r for r in requirements)  # no local version labels (torch's "+cpu")
    assert f"python={sys.version_info.major}.{sys.version_info.minor}" in environment
    again = write_learnware_zip(built["tmp"] / "ensemble", built["tmp"] / "rkme.json", built["semantic"],
                                built["tmp"] / "again.zip", embedding_head=built["head"])
    assert again.read_bytes() == out.read_bytes()


def test_learnware_loader_accepts_the_zip_and_predicts_like_the_ensemble(built: dict[str, Any]) -> None:
    from learnware.learnware import get_learnware_from_dirpath

    folder = built["tmp"] / "unzipped"
    with zipfile.ZipFile(built["zip"]) as zf:
        zf.extractall(folder)
    lw = get_learnware_from_dirpath("crowdforge", built["semantic"], str(folder), ignore_error=False)
    rkme = lw.get_specification().get_stat_spec_by_name("RKMETableSpecification")
    np.testing.assert_allclose(rkme.get_z(), built["z"])
    np.testing.assert_allclose(lw.predict(TEXTS), built["probs"], atol=1e-6)
    np.testing.assert_allclose(lw.predict(np.array(TEXTS, dtype=object)[:, None]), built["probs"], atol=1e-6)
    assert lw.predict([]).shape == (0, 3)
    model = lw.get_model()
    assert model.input_shape == (384,) and model.output_shape == (3,)
    # vectors of the specification's space go through the distilled head; it reproduces the ensemble there
    weight, bias = built["head"]
    via_head = lw.predict(built["emb"] * 3.0)  # any length: the model puts rows on the unit sphere
    np.testing.assert_allclose(via_head, softmax(built["emb"] @ weight.T.astype(float) + bias), atol=1e-5)
    assert (via_head.argmax(1) == built["probs"].argmax(1)).all()
    assert np.abs(via_head - built["probs"]).max() < 0.05
    with pytest.raises(ValueError, match="384"):
        lw.predict(np.zeros((2, 10)))
    with pytest.raises(ValueError, match="one per row"):
        lw.predict(np.array([["two", "columns"]]))
    with pytest.raises(NotImplementedError, match="crowdforge"):
        model.finetune(TEXTS, np.zeros(len(TEXTS)))


def test_learnware_client_reads_the_semantic_spec_from_the_zip(built: dict[str, Any], learnware_root: Path) -> None:
    from learnware.client import LearnwareClient

    client = LearnwareClient(host="http://127.0.0.1:9")  # never contacted: loading a local zip is offline
    assert Path(client.storage_path).is_relative_to(learnware_root)
    lw = client.load_learnware(learnware_path=str(built["zip"]))
    assert lw.get_specification().get_semantic_spec() == built["semantic"]
    np.testing.assert_allclose(lw.predict(TEXTS), built["probs"], atol=1e-6)
    client.cleanup()


def test_bundled_code_runs_without_the_installed_crowdforge(built: dict[str, Any]) -> None:
    """The wrapper imports crowdforge from the zip's code/ folder when none is imported yet."""
    folder = built["tmp"] / "unzipped-code"
    with zipfile.ZipFile(built["zip"]) as zf:
        zf.extractall(folder)
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k == "crowdforge" or k.startswith("crowdforge.")}
    sys.path.insert(0, str(folder / "code"))
    try:
        import crowdforge.modeling.inference as bundled

        assert Path(bundled.__file__).is_relative_to(folder / "code")
        probs = bundled.load_ensemble(folder / "ensemble").predict_proba(TEXTS)
    finally:
        sys.path.remove(str(folder / "code"))
        for k in [k for k in sys.modules if k == "crowdforge" or k.startswith("crowdforge.")]:
            del sys.modules[k]
        sys.modules.update(saved)
    np.testing.assert_allclose(probs, built["probs"], atol=1e-6)


def test_easy_market_checks_and_adds_it_inside_the_chosen_folder(built: dict[str, Any], learnware_root: Path) -> None:
    from learnware.market import BaseChecker, instantiate_learnware_market

    market = instantiate_learnware_market(market_id="crowdforge_test", name="easy", rebuild=True)
    learnware_id, status = market.add_learnware(str(built["zip"]), built["semantic"])
    assert status == BaseChecker.USABLE_LEARNWARE
    assert Path(market.get_learnware_zip_path_by_ids(learnware_id)).is_relative_to(learnware_root)
    np.testing.assert_allclose(market.get_learnware_by_ids(learnware_id).predict(TEXTS), built["probs"], atol=1e-6)

    # without the head the stat checker's random vectors cannot be predicted: the market rejects the zip
    text_only = write_learnware_zip(built["tmp"] / "ensemble", built["tmp"] / "rkme.json", built["semantic"],
                                    built["tmp"] / "text-only.zip")
    assert market.add_learnware(str(text_only), built["semantic"]) == (None, BaseChecker.INVALID_LEARNWARE)


def test_reader_gives_spec_semantics_and_ensemble_without_the_market(built: dict[str, Any]) -> None:
    pkg = load_learnware_zip(built["zip"])
    assert pkg.name == "reviews sentiment" and pkg.classes == CLASSES and pkg.has_embedding_head
    assert pkg.semantic_spec == built["semantic"]
    np.testing.assert_allclose(pkg.rkme().get_z(), built["z"])
    np.testing.assert_allclose(pkg.ensemble().predict_proba(TEXTS), built["probs"], atol=1e-6)


def test_semantic_spec_passes_the_package_checker(learnware_root: Path) -> None:
    from learnware.market import BaseChecker, EasySemanticChecker

    spec = _semantic(domain=["business", "Internet"], licence="mit")
    assert spec["Scenario"]["Values"] == ["Business", "Internet"] and spec["License"]["Values"] == ["MIT"]
    assert spec["Output"]["Dimension"] == 3 and "'neutral'" in spec["Output"]["Description"]["1"]
    assert EasySemanticChecker.check_semantic_spec(spec)[0] == BaseChecker.NONUSABLE_LEARNWARE  # = passed
    bad = _semantic()
    bad["Scenario"]["Values"] = ["Reviews"]
    assert EasySemanticChecker.check_semantic_spec(bad)[0] == BaseChecker.INVALID_LEARNWARE


def test_export_refuses_inconsistent_inputs(built: dict[str, Any]) -> None:
    tmp = built["tmp"]
    with pytest.raises(ValueError, match="Output"):
        write_learnware_zip(tmp / "ensemble", tmp / "rkme.json", _semantic(classes=["neg", "pos"]), tmp / "x.zip")
    weight, bias = built["head"]
    with pytest.raises(ValueError, match="embedding head"):
        write_learnware_zip(tmp / "ensemble", tmp / "rkme.json", built["semantic"], tmp / "x.zip",
                            embedding_head=(weight[:, :10], bias))
    assert not (tmp / "x.zip").exists()
