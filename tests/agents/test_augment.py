"""Augment agent: split, thin-class growth, negations kept, valid untouched."""

import numpy as np
import pandas as pd
import pytest

from crowdforge import io
from crowdforge.agents import augment
from crowdforge.config import AugmentParams, parse_params
from crowdforge.paths import Paths

CLASSES = ["negative", "neutral", "positive"]


def make_labels(counts=None, seed=0):
    counts = counts or {"negative": 20, "neutral": 60, "positive": 80}
    rng = np.random.default_rng(seed)
    rows = []
    for c, n in counts.items():
        for i in range(n):
            conf = float(rng.uniform(0.5, 1.0))
            probs = {f"prob_{k}": (conf if k == c else (1 - conf) / 2) for k in CLASSES}
            rows.append({"item_id": f"{c[:3]}{i}", "text": f"the movie was not good but {c} {i} really",
                         "label": c, "confidence": conf, "n_labels": 3, **probs})
    return pd.DataFrame(rows)


def test_run_split_and_thin_class_growth(tmp_path):
    params = parse_params({"augment": {"thin_ratio": 0.7}})
    paths = Paths(tmp_path)
    labels = make_labels()
    io.write_parquet(paths.labels, labels)
    rep = augment.run(params, paths)
    train, valid = pd.read_parquet(paths.train), pd.read_parquet(paths.valid)
    cols = ["item_id", "text", "label", "confidence", "weight", "prob_negative", "prob_neutral",
            "prob_positive", "augmented", "source_item_id", "gold"]
    assert list(train.columns) == cols and list(valid.columns) == cols
    # valid: real items only, stratified, disjoint from train's sources
    assert not valid["augmented"].any() and not valid["gold"].any()  # no gold.parquet: crowd labels only
    assert set(valid["item_id"]).isdisjoint(train["source_item_id"])
    assert rep["valid_counts"] == {"negative": 3, "neutral": 9, "positive": 12}
    assert len(valid) + rep["n_train_items"] == len(labels)
    # thin class (negative: 17 < 0.7 * 68; neutral 51 is not) grows, at most 2 new rows per item
    assert rep["thin_classes"] == ["negative"]
    assert rep["counts_after"]["negative"] > rep["counts_before"]["negative"]
    assert rep["counts_after"]["negative"] <= rep["counts_before"]["negative"] * (1 + 2)
    aug = train[train["augmented"]]
    assert rep["n_augmented"] == len(aug) > 0
    src = labels.set_index("item_id")
    assert (aug["label"].to_numpy() == src.loc[aug["source_item_id"], "label"].to_numpy()).all()
    assert np.allclose(aug["weight"], 0.5 * aug["confidence"])
    assert np.allclose(aug["prob_negative"], src.loc[aug["source_item_id"], "prob_negative"])
    assert (aug["text"].to_numpy() != src.loc[aug["source_item_id"], "text"].to_numpy()).all()
    assert aug["item_id"].is_unique and not aug["item_id"].isin(labels["item_id"]).any()
    orig = train[~train["augmented"]]
    assert np.allclose(orig["weight"], orig["confidence"])
    # deterministic
    rep2 = augment.run(params, paths)
    pd.testing.assert_frame_equal(train, pd.read_parquet(paths.train))
    assert rep2 == rep


def test_negations_and_contrast_words_survive():
    rng = np.random.default_rng(0)
    text = "the plot is not good but never boring and I don't hate it"
    for _ in range(300):
        out = augment.augment_text(text, rng, word_dropout=0.5).split()
        for w in ("not", "but", "never", "don't"):
            assert w in out
        assert out.index("not") < out.index("but") < out.index("never") < out.index("don't")


def test_no_thin_class_no_augmentation():
    _, _, stats = augment.build_train_valid(
        make_labels({"negative": 30, "neutral": 30, "positive": 30}), CLASSES, AugmentParams())
    assert stats["n_augmented"] == 0 and stats["thin_classes"] == []


def test_bad_input():
    with pytest.raises(ValueError, match="empty"):
        augment.build_train_valid(make_labels().iloc[0:0], CLASSES, AugmentParams())
    with pytest.raises(ValueError, match="not among"):
        augment.build_train_valid(make_labels().assign(label="angry"), CLASSES, AugmentParams())
    with pytest.raises(ValueError, match="missing column"):
        augment.build_train_valid(make_labels().drop(columns="prob_neutral"), CLASSES, AugmentParams())
    # a single-item class stays in train
    tr, va, _ = augment.build_train_valid(make_labels({"negative": 1, "neutral": 10, "positive": 10}),
                                          CLASSES, AugmentParams())
    assert "negative" in set(tr["label"]) and "negative" not in set(va["label"])


def gold_frame(labels: pd.DataFrame, n_check: int, flip: bool = True) -> pd.DataFrame:
    """``n_check`` gold check items among ``labels`` (expert label = the opposite of the crowd's for
    negative/positive when ``flip``, so the test sees which label was used) + a test row."""
    check = labels.head(n_check)[["item_id", "text", "label"]].copy()
    if flip:
        check["label"] = check["label"].map({"negative": "positive", "positive": "negative", "neutral": "neutral"})
    test = pd.DataFrame({"item_id": ["t1"], "text": ["held out"], "label": ["neutral"]})
    return pd.concat([check.assign(split="check"), test.assign(split="test")], ignore_index=True)


@pytest.mark.parametrize("n_check", [40, 10])
def test_gold_checks_go_to_valid_with_their_expert_labels(tmp_path, n_check):
    """Gold checks are never trained on and carry the expert label; with at least min_gold_valid
    of them valid is all gold, with fewer a crowd split joins them."""
    params = parse_params({"augment": {"min_gold_valid": 30}})
    paths = Paths(tmp_path)
    labels = make_labels()
    gold = gold_frame(labels, n_check)
    io.write_parquet(paths.labels, labels)
    io.write_parquet(paths.gold, gold)
    rep = augment.run(params, paths)
    train, valid = pd.read_parquet(paths.train), pd.read_parquet(paths.valid)
    checks = gold[gold["split"] == "check"].set_index("item_id")["label"]
    assert set(checks.index) <= set(valid["item_id"]) and set(checks.index).isdisjoint(train["source_item_id"])
    g = valid[valid["gold"]].set_index("item_id")
    assert sorted(g.index) == sorted(checks.index)
    assert (g["label"] == checks.reindex(g.index)).all() and (g["confidence"] == 1.0).all()
    for c in CLASSES:
        assert (g[f"prob_{c}"] == (g["label"] == c).astype(float)).all()
    assert "t1" not in set(valid["item_id"]) | set(train["item_id"])  # the test split stays out
    assert rep["n_valid_gold"] == n_check and len(valid) + rep["n_train_items"] == len(labels)
    if n_check >= 30:
        assert valid["gold"].all() and rep["valid_source"] == "gold_check"
    else:
        assert (~valid["gold"]).sum() > 0 and rep["valid_source"] == "crowd"


def test_gold_checks_ignore_other_splits_and_unknown_labels():
    gold = pd.DataFrame({"item_id": ["a", "b", "c", 4], "text": ["x"] * 4,
                         "label": ["neutral", "angry", "positive", "negative"],
                         "split": ["check", "check", "test", "check"]})
    assert augment.gold_checks(gold, CLASSES).to_dict() == {"a": "neutral", "4": "negative"}
    assert augment.gold_checks(None, CLASSES).empty
    with pytest.raises(ValueError, match="min_gold_valid"):
        augment.build_train_valid(make_labels(), CLASSES, AugmentParams(min_gold_valid=0))


def test_pairs_stay_pairs_when_augmented():
    import numpy as np

    from crowdforge.agents.augment import augment_text

    rng = np.random.default_rng(0)
    text = "title sony bravia 40 lcd tv price 999 [SEP] name bravia kdl40 television black"
    for _ in range(300):
        out = augment_text(text, rng, 0.3)
        assert out.count("[SEP]") == 1
        left, right = out.split("[SEP]")
        assert set(left.split()) <= set(text.split("[SEP]")[0].split()) | {"cost"}  # no word crossed over
        assert set(right.split()) <= set(text.split("[SEP]")[1].split()) | {"tv", "set"}
