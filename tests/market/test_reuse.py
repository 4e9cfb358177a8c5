"""Search ranking and filters, and the reuse methods (average, job selector, pruning, combined folders)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import random_ensemble

from crowdforge.market import reuse as R
from crowdforge.market.catalog import Entry, SemanticSpec, sample_texts, task_of
from crowdforge.market.search import compatible, search, summary, table, user_task
from crowdforge.market.spec import make_spec
from crowdforge.modeling.inference import load_ensemble
from crowdforge.simulate.text import generate_texts

PRODUCTS = [f"{b} {k} {n} gb {c} smartphone, dual sim, model {b[:2]}-{n * 7}" for b, k, n, c in
            zip(["acme", "zeta", "orbit", "nova"] * 30, ["pro", "lite", "max"] * 40, range(100, 220),
                ["black", "silver", "blue"] * 40, strict=False)]


def entry(name: str, texts: list[str], classes: tuple[str, ...], task: str = "text-classification") -> Entry:
    from crowdforge.market.features import embed

    rkme, stat = make_spec(embed(texts), 60)
    return Entry("registry", name, "1", SemanticSpec(name, task, classes, "test", "en", "MIT", ""), rkme, stat)


@pytest.fixture(scope="module")
def market() -> list[Entry]:
    reviews = generate_texts(400, seed=5)["text"].tolist()
    return [entry("reviews", reviews[:300], ("negative", "neutral", "positive")),
            entry("products", PRODUCTS[:90], ("negative", "positive")),
            entry("reviews-pairs", reviews[:100], ("match", "no-match"), task="pair-classification")]


def test_search_ranks_the_right_model_first_and_says_why_others_are_left_out(market):
    user = user_task(generate_texts(120, seed=9)["text"].tolist())
    matches, skipped = search(user, market)
    assert [m.entry.model for m in matches] == ["reviews", "products"]
    assert matches[0].suitable and not matches[1].suitable
    assert "pair-classification" in skipped["models:/reviews-pairs/1"]
    assert summary(matches, user).startswith("best match: models:/reviews/1")
    assert "reviews" in table(matches, 5).splitlines()[1]


def test_classes_filter_and_no_suitable_model(market):
    user = user_task(PRODUCTS[90:] + ["a phone case with a strap"], classes=["neutral"])
    matches, skipped = search(user, market)
    assert [m.entry.model for m in matches] == ["reviews"]  # the only one predicting `neutral`
    assert "lack neutral" in skipped["models:/products/1"]
    assert summary(matches, user).startswith("no suitable model")
    assert compatible(market[1], user_task(PRODUCTS[100:], classes=["positive"])) is None


def test_task_and_sampling_helpers():
    assert task_of(["a [SEP] b", "c [SEP] d"]) == "pair-classification"
    assert task_of(["a plain text", "another"]) == "text-classification"
    texts = [f"t{i % 50}" for i in range(200)]
    assert sample_texts(texts, 1000, 0) == [f"t{i}" for i in range(50)]
    assert len(set(sample_texts(texts, 20, 0))) == 20 and sample_texts(texts, 20, 0) == sample_texts(texts, 20, 0)
    tags = SemanticSpec("m", "text-classification", ("a", "b"), "d", "en", "MIT", "x").to_tags()
    assert SemanticSpec.from_tags("m", tags) == SemanticSpec("m", "text-classification", ("a", "b"), "d", "en",
                                                            "MIT", "x")
    assert SemanticSpec.from_tags("m", {"other": "1"}) is None


def test_average_and_prune():
    y = np.array([0, 1, 1, 0])
    good = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    bad = good[:, ::-1]
    assert R.prune([bad, good, bad], y) == [1]
    np.testing.assert_allclose(R.average([good, bad]), 0.5)


def test_job_selector_routes_each_text_to_the_model_whose_texts_it_resembles(market):
    from crowdforge.market.features import embed

    texts = generate_texts(5, seed=11)["text"].tolist() + PRODUCTS[100:105]
    probs = [np.tile([1.0, 0.0], (10, 1)), np.tile([0.0, 1.0], (10, 1))]
    p, route = R.select(market[:2], probs, embed(texts))
    assert route.tolist() == [0] * 5 + [1] * 5
    np.testing.assert_allclose(p[:5], [[1.0, 0.0]] * 5)


def _saved(backbone: Path, folder: Path, classes: list[str], seed: int) -> Path:
    return random_ensemble(backbone, classes, seed).save(folder)


def test_combined_folder_predicts_the_average_over_the_users_classes(tiny_backbone: Path, tmp_path: Path):
    a = _saved(tiny_backbone, tmp_path / "a", ["negative", "neutral", "positive"], 1)
    b = _saved(tiny_backbone, tmp_path / "b", ["positive", "negative"], 2)
    classes = ["negative", "positive"]
    texts = ["fine", "terrible service", "good [SEP] great"]
    expected = R.average(R.model_probs([a, b], texts, classes))
    out = R.combine([a, b], [1.0, 1.0], classes, tmp_path / "out", ["models:/a/1", "models:/b/1"], "average")
    ens = load_ensemble(out)
    assert ens.classes == classes and len(ens.members) == 6
    np.testing.assert_allclose(ens.predict_proba(texts), expected, atol=1e-6)
    assert (out / "reuse.json").exists() and not (tmp_path / ".out.tmp").exists()


def test_restricted_renormalises_each_member_over_the_users_classes(tiny_backbone: Path, tmp_path: Path):
    from crowdforge.modeling.inference import softmax

    folder = _saved(tiny_backbone, tmp_path / "a", ["negative", "neutral", "positive"], 3)
    texts = ["fine", "terrible service"]
    full = load_ensemble(folder)
    logits = full.member_logits(texts)
    w = np.array([m.ensemble_weight for m in full.members]) / sum(m.ensemble_weight for m in full.members)
    expected = 0
    for wk, m in zip(w, full.members, strict=True):
        p = softmax(logits[m.name] / m.temperature)[:, [2, 0]]
        expected = expected + wk * p / p.sum(1, keepdims=True)
    cut = R.restricted(load_ensemble(folder), ["positive", "negative"])
    np.testing.assert_allclose(cut.predict_proba(texts), expected, atol=1e-6)


def test_choose_takes_the_closest_suitable_models_with_the_classes(market):
    from dataclasses import replace

    matches, _ = search(user_task(generate_texts(120, seed=9)["text"].tolist(), ["negative", "positive"]), market)
    assert [m.entry.model for m in matches] == ["reviews", "products"]
    classes, chosen = R.choose(matches, ["negative", "positive"], 3)
    assert classes == ["negative", "positive"]
    assert [m.entry.model for m in chosen] == ["reviews"]  # products has the classes but is far
    both = [replace(m, coverage=1.0) for m in matches]
    assert [m.entry.model for m in R.choose(both, ["negative", "positive"], 3)[1]] == ["reviews", "products"]
    assert [m.entry.model for m in R.choose(both, None, 3)[1]] == ["reviews"]  # the closest's classes
    assert R.choose(both, None, 3)[0] == ["negative", "neutral", "positive"]
    with pytest.raises(ValueError, match="no suitable model in the market for"):
        R.choose([replace(m, coverage=0.0) for m in matches], None, 3)
    with pytest.raises(ValueError, match="predicts all of"):
        R.choose(matches[1:] and [replace(matches[1], coverage=1.0)], ["neutral"], 3)


def _labelled_task(seed: int, n: int, classes: int = 3) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Embeddings whose first coordinate carries the class, and a model that confuses classes 0 and 1."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(size=(n, 8))
    x[:, 0] = y + 0.2 * rng.normal(size=n)
    model = np.full((n, classes), 0.05)
    model[np.arange(n), np.where(y == 1, 0, y)] = 0.9
    return x, y, [model / model.sum(1, keepdims=True)]


def test_augment_learns_what_the_model_misses_and_keeps_what_it_knows():
    x, y, probs = _labelled_task(0, 120)
    fit = R.fit_augmented(x, probs, y, ["a", "b", "c"])
    x_new, y_new, probs_new = _labelled_task(1, 300)
    p = fit.predict_proba(x_new, probs_new)
    np.testing.assert_allclose(p.sum(1), 1.0)
    assert (p.argmax(1) == y_new).mean() > 0.9 > (probs_new[0].argmax(1) == y_new).mean()
    assert fit.folds == 5 and fit.c in R.AUGMENT_CS
    again = R.Augmented.from_json(fit.to_json())
    np.testing.assert_allclose(again.predict_proba(x_new, probs_new), p)


def test_augment_gives_an_unlabelled_class_no_probability_and_needs_two_classes():
    x, y, probs = _labelled_task(2, 60)
    keep = y != 2  # class c never labelled; class b labelled once: no folds, C = 1
    keep[np.flatnonzero(y == 1)[1:]] = False
    fit = R.fit_augmented(x[keep], [probs[0][keep]], y[keep], ["a", "b", "c"])
    assert fit.folds == 0 and fit.c == 1.0
    p = R.Augmented.from_json(fit.to_json()).predict_proba(x, probs)
    assert np.all(p[:, 2] == 0.0) and np.allclose(p.sum(1), 1.0)
    with pytest.raises(ValueError, match="only one class"):
        R.fit_augmented(x[y == 0], [probs[0][y == 0]], y[y == 0], ["a", "b", "c"])
