from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crowdforge.modeling.pair_features import (
    FEATURES,
    PairFeaturizer,
    PairSimilarityModel,
    is_pair_task,
    sides,
    soft_label_rows,
)
from crowdforge.modeling.toy import toy_pair_texts


def _pairs(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    return toy_pair_texts(["match" if v else "no_match" for v in y], rng), y


def test_sides_and_pair_task() -> None:
    assert sides(["a b [SEP] c d", "single"]) == (["a b", "single"], ["c d", ""])
    assert is_pair_task(["x [SEP] y"] * 9 + ["z"])
    assert not is_pair_task(["x [SEP] y"] * 8 + ["z", "w"])
    assert not is_pair_task([])


def test_features_see_a_model_code_written_two_ways() -> None:
    texts = ["sony tv kdl-40v4150 [SEP] Sony BRAVIA KDL40V4150", "sony tv kdl-40v4150 [SEP] sony tv kdl-46v5100",
             "blue cable [SEP] red cable"]
    f = dict(zip(FEATURES, PairFeaturizer().fit(texts).transform(texts).T, strict=True))
    assert f["code_overlap"].tolist() == [1.0, 0.0, -1.0]  # same code / different code / no codes at all
    assert f["longest_shared_code"][0] == len("kdl40v4150") and f["longest_shared_code"][1] == 0
    assert f["token_jaccard"][2] == pytest.approx(1 / 3)
    assert f["char_tfidf_cosine"][0] > f["char_tfidf_cosine"][1]


def test_soft_labels_become_weighted_copies() -> None:
    q = np.array([[0.7, 0.3], [1.0, 0.0]])
    rows, labels, weights = soft_label_rows(q, np.array([2.0, 1.0]))
    assert rows.tolist() == [0, 0, 1] and labels.tolist() == [0, 1, 0]
    np.testing.assert_allclose(weights, [1.4, 0.6, 1.0])


def test_learns_matches_from_soft_labels_and_round_trips(tmp_path: Path) -> None:
    texts, y = _pairs(300, 0)
    q = np.eye(2)[y] * 0.8 + 0.1  # soft labels, 90 % on the true class
    model = PairSimilarityModel(2, seed=1).fit(texts, q, np.ones(len(y)))
    test_texts, test_y = _pairs(200, 1)
    probs = model.predict_proba(test_texts)
    assert probs.shape == (200, 2) and np.allclose(probs.sum(1), 1)
    assert (probs.argmax(1) == test_y).mean() >= 0.95
    model.save(tmp_path / "m.skops")
    loaded = PairSimilarityModel.load(tmp_path / "m.skops")
    np.testing.assert_array_equal(loaded.predict_proba(test_texts), probs)


def test_a_class_the_trees_never_saw_keeps_a_column() -> None:
    texts, y = _pairs(100, 2)
    model = PairSimilarityModel(3).fit(texts, np.eye(3)[y], np.ones(len(y)))  # class 2 never occurs
    z = model.logits(texts[:5])
    assert z.shape == (5, 3) and np.all(np.isfinite(z)) and np.all(z[:, 2] == np.log(1e-6))


def test_load_refuses_anything_but_scikit_learn_numpy_scipy(tmp_path: Path) -> None:
    import os

    import skops.io as sio
    from sklearn.preprocessing import FunctionTransformer

    # a scikit-learn object that would call os.system: the classic pickle attack, refused by type
    sio.dump({"n_classes": 2, "seed": 0, "char": FunctionTransformer(func=os.system)}, str(tmp_path / "bad.skops"))
    with pytest.raises(ValueError, match="refusing to load"):
        PairSimilarityModel.load(tmp_path / "bad.skops")
