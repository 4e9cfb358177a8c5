"""Reputation agent end to end on a tiny synthetic project."""

import json

import numpy as np
import pandas as pd
import pytest

from crowdforge import io
from crowdforge.agents import reputation
from crowdforge.config import parse_params
from crowdforge.paths import Paths

CLASSES = ["negative", "neutral", "positive"]


def _conf(kind):
    if kind == "good":
        return np.full((3, 3), 0.1) + np.eye(3) * 0.7
    if kind == "perfect":
        return np.eye(3)
    if kind == "spammer":
        return np.full((3, 3), 1 / 3)
    if kind == "adversary":  # positive -> negative, negative -> positive
        return np.array([[0.05, 0.05, 0.9], [0.1, 0.8, 0.1], [0.9, 0.05, 0.05]])
    raise ValueError(kind)


def make_project(root, n_items=240, per_item=4, seed=0, kinds=None, n_check=40, n_test=20,
                 failures=None, item_offset=0):
    rng = np.random.default_rng(seed)
    kinds = kinds or {**{f"good{i}": "good" for i in range(7)}, "spam": "spammer", "adv": "adversary"}
    workers = sorted(kinds)
    truth = rng.integers(0, 3, size=n_items + n_test)
    ids = [f"i{item_offset + t}" for t in range(n_items + n_test)]
    texts = [f"text number {item_offset + t} is {CLASSES[truth[t]]}" for t in range(n_items + n_test)]
    rows = []
    for t in range(n_items):
        for w in rng.choice(len(workers), size=per_item, replace=False):
            lab = rng.choice(3, p=_conf(kinds[workers[w]])[truth[t]])
            rows.append((workers[w], ids[t], texts[t], CLASSES[lab]))
    # leaked test items: one by id, one by identical text under a new id
    rows.append(("good0", ids[n_items], texts[n_items], "neutral"))
    rows.append(("good1", "sneaky", "  TEXT  " + texts[n_items + 1][5:], "neutral"))
    acc = pd.DataFrame(rows, columns=["contributor_id", "item_id", "text", "label"])
    acc["submitted_at"] = "2026-01-01"
    gold = pd.DataFrame({
        "item_id": ids[:n_check] + ids[n_items:],
        "text": texts[:n_check] + texts[n_items:],
        "label": [CLASSES[x] for x in truth[:n_check]] + [CLASSES[x] for x in truth[n_items:]],
        "split": ["check"] * n_check + ["test"] * n_test,
    })
    paths = Paths(root)
    io.write_parquet(paths.accepted, acc)
    io.write_parquet(paths.gold, gold)
    by = {w: {"rows_in": 10, "rows_accepted": 10 - (failures or {}).get(w, 0),
              "rows_quarantined": (failures or {}).get(w, 0)} for w in workers}
    io.write_json(paths.report("validate"), {"by_contributor": by})
    return paths, pd.Series([CLASSES[x] for x in truth[:n_items]], index=ids[:n_items]), gold


def test_run_end_to_end(tmp_path):
    params = parse_params({})
    paths, truth, gold = make_project(tmp_path, failures={"spam": 5})
    rep = reputation.run(params, paths)
    labels = pd.read_parquet(paths.labels)
    assert list(labels.columns) == ["item_id", "text", "label", "confidence", "n_labels",
                                    "prob_negative", "prob_neutral", "prob_positive"]
    # frozen test split never reaches training: by id and by identical text
    test = gold[gold.split == "test"]
    assert not labels["item_id"].isin(test["item_id"]).any() and "sneaky" not in set(labels["item_id"])
    assert rep["n_test_rows_excluded"] == 2
    assert np.allclose(labels.filter(like="prob_").sum(axis=1), 1)
    acc = (labels.set_index("item_id")["label"].reindex(truth.index) == truth).mean()
    assert acc > 0.85
    assert rep["gold_check_accuracy"] is not None and 0.7 < rep["gold_check_accuracy"] < 1.0
    assert rep["gold_check_accuracy"] >= rep["majority_vote_gold_check_accuracy"]
    # the confidence handed to finetune, scored on gold hidden a fifth at a time
    check = rep["confidence_check"]
    assert check["n"] == 40 and check["folds"] == 5 and 0.7 < check["accuracy"] <= 1.0
    assert abs(check["mean_confidence"] - check["accuracy"]) < 0.1
    assert 0.01 < check["ece_floor"] < 0.2  # 40 items: a calibrated output still measures a sizeable ECE
    assert "Confidence checked on the gold check items" in rep["summary_md"]
    least = [e["contributor_id"] for e in rep["least_trusted"]]
    assert least[:2] == ["adv", "spam"]
    assert "adversary-like" in rep["least_trusted"][0]["why"]
    assert "spammer-like" in rep["least_trusted"][1]["why"] and "quarantined" in rep["least_trusted"][1]["why"]
    assert rep["most_trusted"][0]["contributor_id"].startswith("good")
    for key in ("n_items", "n_labels", "n_contributors", "method", "majority_vote_agreement",
                "mean_confidence", "summary_md"):
        assert key in rep
    ledger = pd.read_parquet(paths.ledger)
    assert list(ledger.columns) == reputation.LEDGER_COLUMNS and len(ledger) == 9
    assert json.loads(ledger["confusion"].iloc[0])["classes"] == CLASSES


def test_rerun_is_idempotent(tmp_path):
    params = parse_params({})
    paths, _, _ = make_project(tmp_path)
    r1 = reputation.run(params, paths)
    l1, led1 = pd.read_parquet(paths.labels), pd.read_parquet(paths.ledger)
    r2 = reputation.run(params, paths)
    pd.testing.assert_frame_equal(l1, pd.read_parquet(paths.labels))
    pd.testing.assert_frame_equal(led1, pd.read_parquet(paths.ledger))
    assert {k: v for k, v in r1.items()} == r2


def test_ledger_prior_helps_sparse_second_round(tmp_path):
    # round 1 (plenty of data, gold checks) builds a track record; round 2 is sparse, has no gold
    # and more adversaries than good workers: without history EM cannot tell who is who
    kinds = {"g0": "good", "g1": "good", "a0": "adversary", "a1": "adversary", "a2": "adversary"}
    params = parse_params({"reputation": {"ledger_prior_cap": 200.0}})
    paths, _, _ = make_project(tmp_path, n_items=400, per_item=4, kinds=kinds, seed=1, n_check=150)
    reputation.run(params, paths)
    ledger1 = pd.read_parquet(paths.ledger)
    paths, truth2, _ = make_project(tmp_path, n_items=60, per_item=2, kinds=kinds, seed=2,
                                    n_check=0, item_offset=10_000)
    no_hist = tmp_path / "nohist"
    p2 = Paths(no_hist)
    for src, dst in ((paths.accepted, p2.accepted), (paths.gold, p2.gold)):
        io.write_parquet(dst, pd.read_parquet(src))
    r_with = reputation.run(params, paths)
    r_without = reputation.run(params, p2)
    assert r_with["contributors_with_history"] == 5 and r_without["contributors_with_history"] == 0

    def accuracy(p):
        lab = pd.read_parquet(p.labels).set_index("item_id")["label"]
        return (lab.reindex(truth2.index) == truth2).mean()

    assert accuracy(paths) > accuracy(p2) + 0.05
    ledger2 = pd.read_parquet(paths.ledger)
    assert ledger2["data_version"].nunique() == 2 and len(ledger2) == len(ledger1) + 5


def test_bad_input(tmp_path):
    params = parse_params({})
    paths, _, _ = make_project(tmp_path, n_items=30)
    acc = pd.read_parquet(paths.accepted)
    io.write_parquet(paths.accepted, acc.assign(label=acc["label"].where(acc.index > 0, "angry")))
    with pytest.raises(ValueError, match="not among data.classes"):
        reputation.run(params, paths)
    io.write_parquet(paths.accepted, acc.iloc[0:0])
    with pytest.raises(ValueError, match="no crowd labels"):
        reputation.run(params, paths)
    with pytest.raises(FileNotFoundError, match="validate"):
        reputation.run(params, Paths(tmp_path / "empty"))


def test_explain_worker():
    prior = np.full(3, 1 / 3)
    assert reputation.explain_worker(np.full((3, 3), 10.0), CLASSES, prior).startswith("spammer-like")
    biased = np.array([[0, 0, 30], [0, 1, 30], [0, 0, 30.0]])
    assert "positive" in reputation.explain_worker(biased, CLASSES, prior)
    adv = np.array([[1, 0, 30], [0, 30, 0], [30, 0, 1.0]])
    assert "adversary-like" in reputation.explain_worker(adv, CLASSES, prior)
    assert reputation.explain_worker(np.eye(3) * 30, CLASSES, prior).startswith("reliable")


@pytest.mark.parametrize("method", ["dawid_skene", "one_coin", "mace", "majority_vote"])
def test_other_estimators_run_the_agent(tmp_path, method):
    params = parse_params({"reputation": {"method": method}})
    paths, truth, _ = make_project(tmp_path, failures={"spam": 5})
    rep = reputation.run(params, paths)
    labels = pd.read_parquet(paths.labels).set_index("item_id")
    assert rep["method"] == method
    assert (labels["label"].reindex(truth.index) == truth).mean() > 0.85
    assert rep["least_trusted"][0]["contributor_id"] in {"adv", "spam"}
    with pytest.raises(ValueError, match="reputation.method"):
        reputation.run(parse_params({"reputation": {"method": "nope"}}), paths)


def test_resubmitted_rows_do_not_count_as_validation_failures():
    from crowdforge.agents.reputation import validation_failures

    got = validation_failures({
        "careful": {"rows_quarantined": 4, "reasons": {"resubmitted": 4}},
        "sloppy": {"rows_quarantined": 5, "reasons": {"resubmitted": 1, "label_not_in_classes": 4}},
        "old-report": {"rows_quarantined": 2},
    })
    assert got == {"careful": 0, "sloppy": 4, "old-report": 2}


def test_one_trusted_annotator_is_taken_at_their_word(tmp_path):
    """A project with a single careful annotator: the labels are theirs, gold checks all pass."""
    params = parse_params({})
    paths, truth, _ = make_project(tmp_path, per_item=1, kinds={"expert": "perfect"})
    rep = reputation.run(params, paths)
    labels = pd.read_parquet(paths.labels).set_index("item_id")
    assert (labels["label"].reindex(truth.index) == truth).all()
    assert rep["gold_check_accuracy"] == rep["majority_vote_gold_check_accuracy"] == 1.0
    assert rep["model"]["method"] == "auto" and rep["model"]["chosen"]
    assert {e["model"] for e in rep["model"]["evidence"]} >= {"majority", "one_coin", "dawid_skene(tau=0)"}
    assert "held-out label likelihoods" in (paths.reports / "reputation.md").read_text()
