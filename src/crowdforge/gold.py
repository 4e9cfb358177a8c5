"""The frozen gold test split: which rows it holds and a hash that says which data a score is on."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd


def text_key(text: object) -> str:
    """Case- and whitespace-folded text: the one key by which the test-split guards (no test sentence
    in training, pretraining or distillation) and the duplicate check recognise the same text."""
    return " ".join(str(text).split()).casefold()


def text_keys(texts: pd.Series) -> pd.Series:
    """:func:`text_key` of every text (missing texts give the empty key)."""
    return texts.fillna("").astype(str).str.split().str.join(" ").str.casefold()


def gold_test(gold_parquet: Path) -> pd.DataFrame:
    gold = pd.read_parquet(gold_parquet)
    test = gold[gold["split"] == "test"].sort_values("item_id").reset_index(drop=True)
    if test.empty:
        raise ValueError(f"{gold_parquet}: no rows with split == 'test' (the frozen gold test split)")
    return test


def test_set_hash(test: pd.DataFrame) -> str:
    """sha256 of the sorted (item_id, text, label) rows: equal hashes mean the same test data."""
    rows = sorted(zip(test["item_id"].astype(str), test["text"].astype(str), test["label"].astype(str)))
    h = hashlib.sha256()
    for row in rows:
        h.update(("\x1f".join(row) + "\x1e").encode())
    return h.hexdigest()
