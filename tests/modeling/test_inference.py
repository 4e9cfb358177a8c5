from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import random_ensemble

from crowdforge.modeling.inference import Ensemble, load_ensemble, mean_pool, temper

TEXTS = ["great service and fast delivery", "awful", "it was okay I guess", "", "love it " * 40]


def _ensemble(backbone: Path) -> Ensemble:
    return random_ensemble(backbone)


def test_mean_pool_ignores_padding() -> None:
    import torch

    h = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]])
    assert torch.equal(mean_pool(h, torch.tensor([[1, 1, 0]])), torch.tensor([[2.0, 2.0]]))


def test_predict_shapes_and_probabilities(tiny_backbone: Path) -> None:
    ens = _ensemble(tiny_backbone)
    probs = ens.predict_proba(TEXTS)
    assert probs.shape == (5, 3)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-9)
    df = ens.predict(TEXTS)
    assert list(df.columns) == ["label", "confidence", "prob_negative", "prob_neutral", "prob_positive"]
    assert set(df["label"]) <= set(ens.classes)
    np.testing.assert_allclose(df["confidence"], probs.max(1))
    assert ens.predict_proba([]).shape == (0, 3)


def test_batching_does_not_change_predictions(tiny_backbone: Path) -> None:
    ens = _ensemble(tiny_backbone)
    full = ens.predict_proba(TEXTS)
    ens.batch_size = 2
    np.testing.assert_allclose(ens.predict_proba(TEXTS), full, atol=1e-5)
    np.testing.assert_allclose(ens.predict_proba(TEXTS[1:2]), full[1:2], atol=1e-5)


def test_save_load_round_trip(tiny_backbone: Path, tmp_path: Path) -> None:
    ens = _ensemble(tiny_backbone)
    ens.save(tmp_path / "ens")
    assert sorted(p.name for p in (tmp_path / "ens" / "encoders").iterdir()) == ["own", "shared"]
    loaded = load_ensemble(tmp_path / "ens")
    assert loaded.classes == ens.classes and loaded.max_length == 16
    assert [m.temperature for m in loaded.members] == [0.7, 1.3, 1.0]
    np.testing.assert_array_equal(loaded.predict_proba(TEXTS), ens.predict_proba(TEXTS))


def test_inference_module_is_standalone() -> None:
    import ast

    import crowdforge.modeling.inference as inf
    from crowdforge.modeling import pair_features, tokens

    def imported(module) -> set[str]:
        tree = ast.parse(Path(module.__file__).read_text())
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
            a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}

    # the served model needs only torch/transformers/numpy/pandas/scikit-learn, the tokenization module
    # and the pair member's module
    assert {m for m in imported(inf) if m and m.startswith("crowdforge")} == {
        "crowdforge.modeling.tokens", "crowdforge.modeling.pair_features"}
    assert not any(m and m.startswith("crowdforge") for m in imported(tokens))
    assert {m for m in imported(pair_features) if m and m.startswith("crowdforge")} == {"crowdforge.modeling.tokens"}


def test_unknown_encoder_is_rejected(tiny_backbone: Path) -> None:
    ens = _ensemble(tiny_backbone)
    with pytest.raises(ValueError, match="unknown encoder"):
        Ensemble(ens.classes, ens.tokenizer, {}, ens.members, 16)


def test_decision_bias_moves_labels_not_probabilities_and_is_saved(tiny_backbone: Path, tmp_path: Path) -> None:
    ens = _ensemble(tiny_backbone)
    texts = ["the soup was fine", "not good", "great phone"]
    before = ens.predict(texts)
    ens.decision_bias = np.array([0.0, 0.0, 50.0])  # the last class wins every decision
    after = ens.predict(texts)
    assert (after["label"] == ens.classes[-1]).all()
    probs = [f"prob_{c}" for c in ens.classes]
    np.testing.assert_allclose(after[probs].to_numpy(), before[probs].to_numpy())
    assert np.allclose(after["confidence"], after[f"prob_{ens.classes[-1]}"])
    loaded = load_ensemble(ens.save(tmp_path / "e"))
    assert np.allclose(loaded.decision_bias, [0.0, 0.0, 50.0])
    assert (loaded.predict(texts)["label"] == ens.classes[-1]).all()


def test_mixture_temperature_sharpens_without_moving_the_ranking_and_is_saved(tiny_backbone: Path,
                                                                             tmp_path: Path) -> None:
    ens = _ensemble(tiny_backbone)
    before = ens.predict_proba(TEXTS)
    ens.temperature = 0.5
    after = ens.predict_proba(TEXTS)
    assert (after.argmax(1) == before.argmax(1)).all() and (after.max(1) > before.max(1)).all()
    np.testing.assert_allclose(after, temper(before, 0.5))
    np.testing.assert_allclose(after.sum(1), 1.0)
    loaded = load_ensemble(ens.save(tmp_path / "e"))
    assert loaded.temperature == 0.5
    np.testing.assert_allclose(loaded.predict_proba(TEXTS), after)


def test_tempering_keeps_the_ranking_and_moves_toward_uniform_above_one() -> None:
    """The distillation targets (``softmax(log p / tau)``) and the mixture's temperature."""
    p = np.array([[0.9, 0.08, 0.02], [0.2, 0.5, 0.3]])
    q = temper(p, 2.0)
    assert (q.argmax(1) == p.argmax(1)).all() and (q.max(1) < p.max(1)).all() and (q.min(1) > p.min(1)).all()
    np.testing.assert_allclose(q.sum(1), 1.0)
    np.testing.assert_allclose(temper(p, 1.0), p)


def test_precision_options_keep_the_probabilities_close(tiny_backbone: Path, tmp_path: Path) -> None:
    ens = _ensemble(tiny_backbone)
    fp32 = ens.predict_proba(TEXTS)
    path = ens.save(tmp_path / "ens")
    for precision, tol in (("bf16", 0.05), ("int8", 0.1)):
        other = load_ensemble(path, precision)
        assert other.precision == precision
        np.testing.assert_allclose(other.predict_proba(TEXTS), fp32, atol=tol)
    assert load_ensemble(path).precision == "fp32"
    with pytest.raises(ValueError, match="not one of fp32, bf16, int8"):
        ens.set_precision("fp16")
    with pytest.raises(ValueError, match="cannot go back"):
        load_ensemble(path, "int8").set_precision("fp32")
