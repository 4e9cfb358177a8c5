"""RKME specifications on the shared feature space: privacy of the reduced set, the null band, verdicts."""

from __future__ import annotations

import numpy as np
import pytest

from crowdforge.market import spec as S
from crowdforge.market.features import embed
from crowdforge.simulate.text import generate_texts

PRODUCTS = [f"model {c}-{n} {w} cable {m} m black, pack of {k}" for c, n, w, m, k in
            zip("abcdefghijklmnopqrstuvwxyz" * 4, range(1000, 1104), ["usb", "hdmi", "ethernet", "audio"] * 26,
                [1, 2, 3, 5] * 26, [1, 2, 4, 10] * 26, strict=False)]


@pytest.fixture(scope="module")
def reviews() -> np.ndarray:
    return embed(generate_texts(600, seed=3)["text"].tolist())


def test_reduced_set_points_are_not_training_embeddings(reviews):
    """Each point of the specification is far from every training embedding, compared with how close
    training embeddings come to each other: no point is (a copy of) a training example."""
    spec = S.rkme(reviews, 100, private=True)
    z = spec.z.numpy().reshape(len(spec.z), -1)
    to_train = np.sqrt(S._sq_dist(z, reviews)).min(1)
    between = np.sqrt(S._sq_dist(reviews, reviews))
    np.fill_diagonal(between, np.inf)
    nearest_neighbour = between.min(1)
    nearest_neighbour = nearest_neighbour[np.isfinite(nearest_neighbour) & (nearest_neighbour > 1e-6)]
    assert to_train.min() > 0.5 * np.median(nearest_neighbour)
    support = np.bincount(S._sq_dist(reviews, z).argmin(1), minlength=len(z))
    assert support.min() >= S.MIN_SUPPORT
    assert np.isclose(float(spec.beta.sum()), 1.0, atol=1e-6) and float(spec.beta.min()) >= -1e-9


def test_an_outlier_gets_no_point_of_its_own():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8)) * 0.05
    x[0] = 5.0  # one row far from all others: k-means would give it its own centre
    spec = S.rkme(x, 20, private=True)
    z = spec.z.numpy().reshape(len(spec.z), -1)
    assert np.sqrt(S._sq_dist(z, x[:1])).min() > 1.0


def test_null_band_and_coverage_tell_same_narrower_and_other_texts(reviews):
    model, stat = S.make_spec(reviews[:400], 100)
    assert stat.null.a >= 0 and stat.null.b >= 0 and stat.null.at(50) > stat.null.at(800)
    assert S.StatSpec.from_json(stat.to_json()) == stat

    def reading(x):
        coverage = float((S.density(model, x) >= stat.typical_density).mean())
        return S.mmd2(S.rkme(x, 100, seed=1), model), coverage

    same, same_cov = reading(reviews[400:])  # unseen texts of the same kind
    assert same_cov > 0.8 and S.verdict(same, stat.null.at(200), same_cov).startswith(("close", "covered"))
    food = embed(generate_texts(150, seed=4, topics=["food"])["text"].tolist())  # one topic of the seven
    narrow, narrow_cov = reading(food)
    assert narrow > same and S.covers(narrow_cov)  # further in MMD, yet covered: the model saw such texts
    other, other_cov = reading(embed(PRODUCTS))
    assert other_cov < 0.1 and S.verdict(other, stat.null.at(len(PRODUCTS)), other_cov).startswith("far")


def test_specification_files_round_trip(tmp_path, reviews):
    model, stat = S.make_spec(reviews[:200], 50)
    S.save_spec(tmp_path, model, stat)
    loaded, stat2 = S.load_spec(tmp_path)
    assert stat2 == stat
    assert S.mmd2(loaded, model) < 1e-9
