"""The simulated crowd: kinds behave as designed, the mix is configurable, real text works."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crowdforge.simulate.crowd import (
    CrowdMix,
    allocate_counts,
    read_gold_file,
    simulate_crowd,
    simulate_crowd_from_file,
)
from crowdforge.simulate.text import DEFAULT_CLASSES, generate_texts

CLASSES = list(DEFAULT_CLASSES)


def _items(n: int, seed: int = 0) -> pd.DataFrame:
    df = generate_texts(n, seed)
    df.insert(0, "item_id", [f"it{i:05d}" for i in range(n)])
    return df


@pytest.fixture(scope="module")
def sim():
    return simulate_crowd(_items(3000), CLASSES, 60, seed=1, labels_per_item=(2, 6))


def test_shape_and_contract(sim) -> None:
    labels, truth = sim
    assert list(labels.columns) == ["contributor_id", "item_id", "text", "label", "submitted_at"]
    assert set(labels["label"]) <= set(CLASSES)
    assert not labels.duplicated(["contributor_id", "item_id"]).any()
    per_item = labels.groupby("item_id").size()
    assert per_item.min() >= 2 and per_item.max() <= 6
    assert labels["submitted_at"].str.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$").all()
    assert set(truth["contributor_id"]) == (set(labels["contributor_id"])
                                            | set(truth.loc[truth.n_labels == 0, "contributor_id"]))
    assert len(truth) == 60


def test_kinds_and_accuracy_as_designed(sim) -> None:
    labels, truth = sim
    assert set(truth["kind"]) == {"expert", "ordinary", "careless", "spammer", "adversary", "biased", "copier"}
    # pool labels per kind so tiny contributors do not make the test flaky
    items = _items(3000).set_index("item_id")["label"]
    merged = labels.merge(truth[["contributor_id", "kind"]], on="contributor_id")
    acc = (merged["label"] == merged["item_id"].map(items)).groupby(merged["kind"]).mean()
    assert acc["expert"] > 0.9
    assert 0.6 < acc["ordinary"] < 0.9
    assert 0.4 < acc["careless"] < 0.6
    assert abs(acc["spammer"] - 1 / 3) < 0.07
    assert acc["adversary"] < 0.15
    assert acc["biased"] < acc["ordinary"]
    biased = merged[merged["kind"] == "biased"].merge(truth[["contributor_id", "favourite_class"]], on="contributor_id")
    assert (biased["label"] == biased["favourite_class"]).mean() > 0.55
    # copiers agree with their leader far more than independent contributors would
    copiers = truth[truth["kind"] == "copier"]
    leader = copiers["leader"].iloc[0]
    lead = labels[labels["contributor_id"] == leader].set_index("item_id")["label"]
    for cid in copiers["contributor_id"]:
        own = labels[labels["contributor_id"] == cid].set_index("item_id")["label"]
        assert len(own) > 0 and own.index.isin(lead.index).all()
        assert (own == lead.loc[own.index]).mean() > 0.85
    # measured accuracy in the truth table matches the labels
    assert np.allclose(truth.set_index("contributor_id")["accuracy"].dropna(),
                       (merged["label"] == merged["item_id"].map(items))
                       .groupby(merged["contributor_id"]).mean().round(4),
                       atol=1e-4)


def test_activity_is_uneven(sim) -> None:
    counts = sim.labels.groupby("contributor_id").size()
    assert counts.max() > 3 * counts.median()
    assert counts.min() < counts.median() / 4


def test_configurable_mix() -> None:
    mix = CrowdMix({"spammer": 0.2, "adversary": 0.1, "ordinary": 0.7}, copiers=0)
    items = _items(30_000, seed=2)
    labels, truth = simulate_crowd(items, CLASSES, 200, seed=3, labels_per_item=(3, 4), mix=mix)
    assert len(labels) > 90_000
    assert truth["kind"].value_counts().to_dict() == {"ordinary": 140, "spammer": 40, "adversary": 20}
    ordinary = truth[truth["kind"] == "ordinary"]["design_accuracy"]
    assert ordinary.between(0.6, 0.9).all()
    fixed, _ = simulate_crowd(items.iloc[:100], CLASSES, 10, seed=3, labels_per_item=3, mix=mix)
    assert (fixed.groupby("item_id").size() == 3).all()


def test_allocation_and_bad_input() -> None:
    assert allocate_counts({"expert": 0.5, "spammer": 0.5}, 5) in ({"expert": 3, "spammer": 2},
                                                                   {"expert": 2, "spammer": 3})
    assert allocate_counts({"expert": 0.98, "adversary": 0.02}, 10)["adversary"] == 1
    with pytest.raises(ValueError, match="unknown contributor kind"):
        CrowdMix({"troll": 1.0})
    with pytest.raises(ValueError, match="not in classes"):
        simulate_crowd(_items(5), ["a", "b"], 5, seed=0)


def test_reproducible() -> None:
    a = simulate_crowd(_items(200), CLASSES, 12, seed=9)
    b = simulate_crowd(_items(200), CLASSES, 12, seed=9)
    pd.testing.assert_frame_equal(a.labels, b.labels)
    pd.testing.assert_frame_equal(a.contributors, b.contributors)


def test_from_sst_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    lines = [f"{int(rng.integers(2))} sentence number {i} , with a comma and \"quotes\" ." for i in range(300)]
    src = tmp_path / "stsa.binary.train"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    gold = read_gold_file(src)
    assert len(gold) == 300 and set(gold["label"]) == {"0", "1"}
    out = tmp_path / "raw"
    summary = simulate_crowd_from_file(src, out, n_contributors=12, seed=1, gold_check_fraction=0.1,
                                       gold_test_fraction=0.2, truth_dir=tmp_path / "simulation")
    assert summary["classes"] == ["0", "1"]
    files = sorted((out / "contributions").glob("*.csv"))
    assert len(files) >= 10
    labels = pd.concat([pd.read_csv(f, dtype=str, keep_default_na=False) for f in files])
    assert len(labels) == summary["n_labels"] and set(labels["label"]) <= {"0", "1"}
    gold_out = pd.read_csv(out / "gold.csv", dtype=str)
    assert gold_out["split"].value_counts().to_dict() == {"test": 60, "check": 30}
    test_ids = set(gold_out.loc[gold_out["split"] == "test", "item_id"])
    assert not test_ids & set(labels["item_id"])
    assert set(gold_out.loc[gold_out["split"] == "check", "item_id"]) <= set(labels["item_id"])
    truth = pd.read_csv(tmp_path / "simulation" / "contributors.csv")
    assert len(truth) == 12 and "kind" in truth
    assert not (out / "truth").exists()
    # csv / tsv inputs read the same way
    gold.to_csv(tmp_path / "g.csv", index=False)
    assert read_gold_file(tmp_path / "g.csv").equals(gold)


def test_from_file_with_shares(tmp_path: Path) -> None:
    src = tmp_path / "g.tsv"
    pd.DataFrame({"text": [f"text {i}" for i in range(200)],
                  "label": ["a", "b", "c", "d"] * 50}).to_csv(src, sep="\t", index=False)
    summary = simulate_crowd_from_file(src, tmp_path / "out", n_contributors=20, seed=2, labels_per_item=3,
                                       spammer_share=0.2, adversary_share=0.1)
    assert summary["kinds"] == {"adversary": 2, "ordinary": 14, "spammer": 4}
    assert summary["classes"] == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="within"):
        simulate_crowd_from_file(src, tmp_path / "x", spammer_share=0.8, adversary_share=0.4)
