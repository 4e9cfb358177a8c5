"""aggregate(): the gold check that says how far the confidence can be trusted on a given crowd."""

import numpy as np
import pandas as pd
from test_dawid_skene import make_crowd

from crowdforge.truth.aggregate import GOLD_CHECK_MIN_ITEMS, aggregate


def with_traps(df: pd.DataFrame, truth: pd.Series, share: float, seed: int = 0) -> pd.DataFrame:
    """Make ``share`` of the items traps: every worker gives the same wrong class (errors made together)."""
    rng = np.random.default_rng(seed)
    traps = truth.index[rng.random(len(truth)) < share]
    wrong = ((truth[traps] + 1) % 3).to_dict()
    df = df.copy()
    hit = df["task"].isin(traps)
    df.loc[hit, "label"] = df.loc[hit, "task"].map(wrong)
    return df


def test_gold_check_finds_calibrated_confidence_on_an_independent_crowd():
    df, truth = make_crowd(n_tasks=600, seed=1)
    gold = truth.iloc[:150]
    check = aggregate(df, gold=gold).gold_check
    assert check["n"] == 150 and check["folds"] == 5
    assert abs(check["mean_confidence"] - check["accuracy"]) < 0.05
    assert check["ece"] < 0.08


def test_gold_check_exposes_errors_the_crowd_makes_together():
    df, truth = make_crowd(n_tasks=600, seed=1)
    df = with_traps(df, truth, share=0.15)
    # dawid_skene fits no temperature: the labels alone set the confidence -- "sure" on the traps;
    # the hidden gold shows they are wrong
    few = aggregate(df, method="dawid_skene", gold=truth.iloc[:25])
    assert few.gold_check["mean_confidence"] - few.gold_check["accuracy"] > 0.1
    assert any("over-confident" in n for n in few.notes)
    # the default tempers on the gold when cross-validation on it says so, even with 25 items
    tempered = aggregate(df, gold=truth.iloc[:25]).gold_check
    assert (abs(tempered["mean_confidence"] - tempered["accuracy"])
            < few.gold_check["mean_confidence"] - few.gold_check["accuracy"])
    # 150 gold items: the gold calibrates the confidence; the check measures how far that went
    gold = truth.iloc[:150]
    check = aggregate(df, gold=gold).gold_check
    items = aggregate(df).items.set_index("item").loc[gold.index.astype(str)]
    labels_only_gap = items["confidence"].mean() - (items["label"].to_numpy() == gold.to_numpy()).mean()
    assert labels_only_gap > 0.1
    assert abs(check["mean_confidence"] - check["accuracy"]) < labels_only_gap


def test_notes_say_whether_the_confidence_was_checked():
    df, truth = make_crowd(n_tasks=200)
    assert any(n.startswith("no gold") for n in aggregate(df).notes)
    few = aggregate(df, gold=truth.iloc[:GOLD_CHECK_MIN_ITEMS - 1])
    assert few.gold_check is None and not any("checked on" in n for n in few.notes)
    enough = aggregate(df, gold=truth.iloc[:GOLD_CHECK_MIN_ITEMS])
    assert enough.gold_check["n"] == GOLD_CHECK_MIN_ITEMS
    assert any(f"checked on {GOLD_CHECK_MIN_ITEMS} gold items" in n for n in enough.notes)
    # majority vote: the check runs the same way, gold items are clamped in the output
    mv = aggregate(df, method="majority_vote", gold=truth.iloc[:40])
    assert mv.gold_check["n"] == 40
    assert (mv.items.set_index("item").loc[truth.index[:40].astype(str), "confidence"] == 1).all()
