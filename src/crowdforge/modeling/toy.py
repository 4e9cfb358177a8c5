"""Small generated blackboards for tests and timing (no real data, no network).

Texts of about 15 words: a few class-cue words among shared filler words, so a classifier can
learn the task but has to find the cues. Columns follow docs/artifacts.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from crowdforge import io
from crowdforge.paths import Paths

CUES = {
    "negative": ["awful", "terrible", "bad", "poor", "broken", "hate", "worst", "rude", "slow", "refund"],
    "neutral": ["okay", "average", "fine", "ordinary", "plain", "usual", "standard", "normal", "typical", "fair"],
    "positive": ["great", "excellent", "love", "wonderful", "best", "superb", "friendly", "fast", "perfect", "happy"],
}
FILLER = ["the", "delivery", "product", "service", "was", "and", "i", "it", "staff", "price", "really", "quite",
          "store", "order", "item", "arrived", "today", "experience", "my", "with", "for", "this", "that", "box",
          "phone", "support", "team", "week", "after", "before", "again"]


def toy_texts(labels: Sequence[str], rng: np.random.Generator, n_words: int = 15, n_cues: int = 3) -> list[str]:
    out = []
    for label in labels:
        cues = CUES.get(label) or [f"{label}{i}" for i in range(5)]
        words = list(rng.choice(FILLER, n_words - n_cues)) + list(rng.choice(cues, n_cues))
        rng.shuffle(words)
        out.append(" ".join(words))
    return out


def toy_pair_texts(labels: Sequence[str], rng: np.random.Generator) -> list[str]:
    """Pairs of product records ``"<left> [SEP] <right>"``: for label ``match`` the right record has the
    left one's model code written differently (``ab-1234`` / ``AB1234``), otherwise another code of
    the same brand; the descriptive words are drawn independently on both sides."""
    out = []
    for label in labels:
        brand = str(rng.choice(["acme", "zenith", "orbit", "nova"]))
        code = f"{rng.choice(list('abcdefgh'))}{rng.choice(list('klmnpq'))}-{rng.integers(100, 9999)}"
        other = code if label == "match" else f"{code[:3]}{rng.integers(100, 9999)}"
        words = [" ".join(rng.choice(FILLER, 4)) for _ in range(2)]
        right = other.replace("-", "").upper() if label == "match" else other
        out.append(f"{brand} {words[0]} {code} [SEP] {brand.title()} {right} {words[1]}")
    return out


def toy_labelled(n: int, classes: Sequence[str], rng: np.random.Generator, prefix: str,
                 noise: float = 0.1, pairs: bool = False) -> pd.DataFrame:
    y = rng.integers(0, len(classes), n)
    labels = [classes[i] for i in y]
    q = np.full((n, len(classes)), noise / max(len(classes) - 1, 1))
    q[np.arange(n), y] = 1.0 - noise
    df = pd.DataFrame({
        "item_id": [f"{prefix}{i:05d}" for i in range(n)],
        "text": toy_pair_texts(labels, rng) if pairs else toy_texts(labels, rng),
        "label": labels,
        "confidence": q.max(1),
    })
    for j, c in enumerate(classes):
        df[f"prob_{c}"] = q[:, j]
    return df


def write_toy_blackboard(
    paths: Paths,
    classes: Sequence[str] = ("negative", "neutral", "positive"),
    *,
    n_train: int = 120,
    n_valid: int = 45,
    n_test: int = 45,
    n_unlabeled: int = 150,
    seed: int = 0,
    pairs: bool = False,
) -> None:
    """Write gold, unlabeled, accepted, train_augmented and valid parquet files (``pairs``: texts are
    record pairs, :func:`toy_pair_texts`, classes e.g. ``("no_match", "match")``)."""
    rng = np.random.default_rng(seed)
    classes = list(classes)
    train = toy_labelled(n_train, classes, rng, "tr", pairs=pairs)
    train["weight"] = rng.uniform(0.5, 1.0, len(train))
    train["augmented"] = False
    train["source_item_id"] = train["item_id"]
    valid = toy_labelled(n_valid, classes, rng, "va", pairs=pairs)
    valid["weight"] = 1.0
    valid["augmented"] = False
    valid["source_item_id"] = valid["item_id"]
    test = toy_labelled(n_test, classes, rng, "te", pairs=pairs)
    gold = pd.concat([
        test[["item_id", "text", "label"]].assign(split="test"),
        valid.head(10)[["item_id", "text", "label"]].assign(split="check"),
    ], ignore_index=True)
    unl_labels = [classes[i] for i in rng.integers(0, len(classes), n_unlabeled)]
    unlabeled = pd.DataFrame({"text": toy_texts(unl_labels, rng), "source_file": "data/raw/unlabeled/u.txt",
                              "source_line": np.arange(1, n_unlabeled + 1)})
    accepted = pd.DataFrame({
        "contributor_id": "c1", "item_id": train["item_id"], "text": train["text"], "label": train["label"],
        "submitted_at": "2026-01-01T00:00:00Z", "source_file": "data/raw/contributions/c1.csv",
        "source_line": np.arange(2, n_train + 2), "row_hash": "x", "raw": "{}", "parse_error": None,
    })
    io.write_parquet(paths.gold, gold)
    io.write_parquet(paths.unlabeled, unlabeled)
    io.write_parquet(paths.accepted, accepted)
    io.write_parquet(paths.train, train)
    io.write_parquet(paths.valid, valid)
