"""Augment agent: hold out a validation split, then grow thin classes with real text augmentation.

Why this shape:

* The split comes first. Gold ``check`` items (hidden checks whose expert label is known) always go
  to ``valid`` with their expert label (``gold=True``, confidence 1) and are never trained on:
  early stopping, temperature scaling and ensemble weights fitted on true labels do not learn the
  crowd's noise. With at least ``min_gold_valid`` of them, ``valid`` holds
  only gold items and every crowd item is trained on; with fewer (too few to fit temperatures
  reliably), a stratified, seeded ``valid_fraction`` of the crowd items joins them and the ensemble
  falls back to its noise-aware fit. ``valid`` is never augmented: a validation set of paraphrases
  would flatter the model.
* A class is *thin* when its train count is below ``thin_ratio`` x the largest class. For each
  thin class we add at most ``max_new_per_item`` new examples per item, most confident items first,
  until the class reaches ``ceil(thin_ratio x largest)`` -- just enough that it is no longer thin;
  we do not try to balance fully, because invented sentences are weaker evidence than real ones.
* The augmentations are EDA-style (Wei & Zou, "EDA: Easy Data Augmentation Techniques for Boosting
  Performance on Text Classification Tasks", EMNLP 2019): random word dropout (prob.
  ``word_dropout``), one adjacent-word swap and synonym replacement from a small built-in
  sentiment-neutral lexicon. Negation and contrast words (not, never, no, but, ...) are never
  dropped or moved, since removing "not" flips the label.
* Augmented rows carry their source's soft label, ``augmented=True``, ``source_item_id`` and half
  the source's weight (``weight = confidence x 0.5``; originals ``weight = confidence``), so the
  trainer counts them as weaker evidence. Originals have ``source_item_id`` = their own id, which
  lets later steps group or bootstrap by source.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from crowdforge import io
from crowdforge.config import AugmentParams, Params
from crowdforge.modeling.tokens import PAIR_SEPARATOR, split_pair
from crowdforge.paths import Paths
from crowdforge.reports import write_report

AUGMENTED_WEIGHT = 0.5

PROTECTED = frozenset({
    "not", "no", "never", "none", "nor", "neither", "nothing", "nobody", "nowhere", "without",
    "but", "however", "although", "though", "yet", "except", "despite", "hardly", "barely",
    "scarcely", "cannot", "can't", "don't", "doesn't", "didn't", "isn't", "wasn't", "aren't",
    "weren't", "won't", "wouldn't", "shouldn't", "couldn't", "haven't", "hasn't", "hadn't",
    "n't", "ain't", "dont", "cant", "wont", "isnt", "doesnt", "didnt",
})

# small, meaning-preserving lexicon (sentiment-bearing words map to words of the same polarity)
SYNONYMS: dict[str, tuple[str, ...]] = {
    "good": ("great", "fine", "nice"), "great": ("excellent", "good", "wonderful"),
    "bad": ("poor", "awful", "terrible"), "terrible": ("awful", "dreadful", "bad"),
    "movie": ("film", "picture"), "film": ("movie", "picture"), "very": ("really", "truly"),
    "really": ("very", "truly"), "funny": ("amusing", "hilarious"), "boring": ("dull", "tedious"),
    "love": ("adore", "like"), "hate": ("dislike", "detest"), "big": ("large", "huge"),
    "small": ("little", "tiny"), "quick": ("fast", "rapid"), "slow": ("sluggish", "plodding"),
    "happy": ("glad", "pleased"), "sad": ("unhappy", "gloomy"), "story": ("plot", "tale"),
    "product": ("item",), "service": ("support",), "price": ("cost",), "beautiful": ("lovely", "gorgeous"),
    "ugly": ("unsightly", "hideous"), "smart": ("clever", "bright"), "stupid": ("dumb", "foolish"),
    "weather": ("conditions",), "today": ("this day",), "awesome": ("amazing", "fantastic"),
    "awful": ("terrible", "horrible"), "ok": ("okay", "fine"), "okay": ("ok", "fine"),
}

_TOKEN = re.compile(r"\S+")
_STRIP = re.compile(r"^\W+|\W+$")


def _core(token: str) -> str:
    return _STRIP.sub("", token.casefold())


def is_protected(token: str) -> bool:
    core = _core(token)
    return core in PROTECTED or core.endswith("n't")


def augment_text(text: str, rng: np.random.Generator, word_dropout: float) -> str:
    """One augmented variant: word dropout + one adjacent swap + at most one synonym swap.

    Protected (negation/contrast) tokens are never dropped and never moved. At least one token is
    always kept. A pair (``left [SEP] right``, :mod:`crowdforge.modeling.tokens`) is augmented side by
    side and keeps its separator, so it stays a pair and no word crosses it. May return ``text``
    unchanged for very short texts; callers filter those.
    """
    left, right = split_pair(text, [PAIR_SEPARATOR])
    if right is not None:
        return f"{augment_text(left, rng, word_dropout)} {PAIR_SEPARATOR} {augment_text(right, rng, word_dropout)}"
    tokens = _TOKEN.findall(text)
    if not tokens:
        return text
    # synonym replacement (one word, if any has a synonym)
    cand = [i for i, t in enumerate(tokens) if _core(t) in SYNONYMS]
    if cand and rng.random() < 0.7:
        i = cand[int(rng.integers(len(cand)))]
        core = _core(tokens[i])
        syn = SYNONYMS[core][int(rng.integers(len(SYNONYMS[core])))]
        tokens[i] = tokens[i].casefold().replace(core, syn, 1)
    # adjacent swap of two unprotected tokens
    pairs = [i for i in range(len(tokens) - 1) if not is_protected(tokens[i]) and not is_protected(tokens[i + 1])]
    if pairs:
        i = pairs[int(rng.integers(len(pairs)))]
        tokens[i], tokens[i + 1] = tokens[i + 1], tokens[i]
    # word dropout of unprotected tokens
    drop = (rng.random(len(tokens)) < word_dropout) & np.array([not is_protected(t) for t in tokens])
    if drop.all():
        drop[int(rng.integers(len(tokens)))] = False
    kept = [t for t, d in zip(tokens, drop) if not d]
    return " ".join(kept)


def stratified_split(labels: pd.DataFrame, valid_fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeded split per label: ``round(valid_fraction * n)`` items of each class go to valid.

    A class with a single item stays in train. Deterministic given (item ids, labels, seed).
    """
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"augment.valid_fraction must be in [0, 1), got {valid_fraction}")
    df = labels.sort_values("item_id", kind="mergesort").reset_index(drop=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(df))
    df = df.iloc[order]
    rank = df.groupby("label", sort=True).cumcount()
    size = df.groupby("label")["item_id"].transform("size")
    n_valid = np.where(size >= 2, np.round(size * valid_fraction), 0)
    is_valid = rank.to_numpy() < n_valid
    train = df[~is_valid].sort_values("item_id", kind="mergesort").reset_index(drop=True)
    valid = df[is_valid].sort_values("item_id", kind="mergesort").reset_index(drop=True)
    return train, valid


def plan_targets(counts: pd.Series, thin_ratio: float) -> dict[str, int]:
    """New rows wanted per class: thin classes up to ``ceil(thin_ratio * largest)``."""
    if counts.empty or counts.max() == 0:
        return {}
    threshold = thin_ratio * counts.max()
    target = math.ceil(threshold)
    return {c: int(target - n) for c, n in counts.items() if n < threshold}


def augment_class(rows: pd.DataFrame, n_new: int, ap: AugmentParams, rng: np.random.Generator) -> pd.DataFrame:
    """Up to ``n_new`` augmented copies of ``rows`` (most confident first, round-robin)."""
    if rows.empty or n_new <= 0:
        return rows.iloc[0:0]
    tie = rng.random(len(rows))
    order = np.lexsort((tie, -rows["confidence"].to_numpy()))
    src = rows.iloc[order]
    out, seen = [], {}
    for round_ in range(ap.max_new_per_item):
        for _, r in src.iterrows():
            if len(out) >= n_new:
                break
            used = seen.setdefault(r["item_id"], {r["text"]})
            for _attempt in range(5):
                text = augment_text(r["text"], rng, ap.word_dropout)
                if text not in used:
                    break
            else:
                continue
            used.add(text)
            new = r.copy()
            new["text"] = text
            new["source_item_id"] = r["item_id"]
            new["item_id"] = f"{r['item_id']}#aug{len(used) - 1}"
            new["augmented"] = True
            new["weight"] = float(r["confidence"]) * AUGMENTED_WEIGHT
            out.append(new)
    return pd.DataFrame(out, columns=rows.columns) if out else rows.iloc[0:0]


def gold_checks(gold: pd.DataFrame | None, classes: Sequence[str]) -> pd.Series:
    """Expert labels of the gold ``check`` items (item_id -> label); never the ``test`` split."""
    if gold is None or gold.empty:
        return pd.Series(dtype=object)
    check = gold[(gold["split"] == "check") & gold["label"].isin(list(classes))]
    check = check.assign(item_id=check["item_id"].astype(str)).drop_duplicates("item_id")
    return check.set_index("item_id")["label"].astype(str)


def split_with_gold(base: pd.DataFrame, classes: Sequence[str], checks: pd.Series, ap: AugmentParams
                    ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, valid): gold check items -> valid with their expert label; crowd items -> train,
    except a ``valid_fraction`` split of them when there are fewer than ``min_gold_valid`` checks."""
    is_check = base["item_id"].isin(checks.index).to_numpy()
    gold = base[is_check].copy()
    if len(gold):
        gold["label"] = gold["item_id"].map(checks)
        for c in classes:
            gold[f"prob_{c}"] = (gold["label"] == c).astype(float)
        gold["confidence"] = 1.0
        gold["weight"] = 1.0
    gold["gold"] = True
    crowd = base[~is_check].assign(gold=False)
    fraction = 0.0 if len(gold) >= ap.min_gold_valid else ap.valid_fraction
    train, valid = stratified_split(crowd, fraction, ap.seed)
    valid = pd.concat([v for v in (valid, gold) if len(v)] or [valid], ignore_index=True)
    return train, valid.sort_values("item_id", kind="mergesort").reset_index(drop=True)


def build_train_valid(labels: pd.DataFrame, classes: Sequence[str], ap: AugmentParams,
                      checks: pd.Series | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Pure core of the agent: split (``checks``: expert labels of gold check items), augment thin
    classes, return (train, valid, stats)."""
    prob_cols = [f"prob_{c}" for c in classes]
    need = {"item_id", "text", "label", "confidence", *prob_cols}
    missing = sorted(need - set(labels.columns))
    if missing:
        raise ValueError(f"labels table is missing column(s) {missing}")
    if labels.empty:
        raise ValueError("labels table is empty: nothing to split or augment")
    unknown = sorted(set(labels["label"]) - set(classes))
    if unknown:
        raise ValueError(f"labels {unknown[:5]} are not among data.classes {list(classes)}")
    base = labels[["item_id", "text", "label", "confidence", *prob_cols]].copy()
    base["item_id"] = base["item_id"].astype(str)
    base["weight"] = base["confidence"].astype(float)
    base["augmented"] = False
    base["source_item_id"] = base["item_id"]
    cols = ["item_id", "text", "label", "confidence", "weight", *prob_cols, "augmented", "source_item_id"]
    base = base[cols]
    train, valid = split_with_gold(base, classes, checks if checks is not None else pd.Series(dtype=object), ap)
    before = train["label"].value_counts().reindex(list(classes), fill_value=0)
    plan = plan_targets(before, ap.thin_ratio)
    rng = np.random.default_rng(ap.seed + 1)
    new_parts = [augment_class(train[train["label"] == c], n, ap, rng) for c, n in sorted(plan.items())]
    new_parts = [p for p in new_parts if len(p)]
    if new_parts:
        train = pd.concat([train, *new_parts], ignore_index=True)
    train["augmented"] = train["augmented"].astype(bool)
    after = train["label"].value_counts().reindex(list(classes), fill_value=0)
    stats = {
        "n_items": len(labels),
        "n_train_items": int((~train["augmented"]).sum()),
        "n_valid": len(valid),
        "n_valid_gold": int(valid["gold"].sum()),
        "valid_source": "gold_check" if len(valid) and valid["gold"].all() else "crowd",
        "n_augmented": int(train["augmented"].sum()),
        "n_train": len(train),
        "thin_classes": sorted(plan),
        "counts_before": {c: int(before[c]) for c in classes},
        "counts_after": {c: int(after[c]) for c in classes},
        "valid_counts": {c: int((valid["label"] == c).sum()) for c in classes},
    }
    return train.reset_index(drop=True), valid, stats


def run(params: Params, paths: Paths) -> dict[str, Any]:
    """Read labels.parquet (+ the gold check items of gold.parquet), write train_augmented.parquet +
    valid.parquet + reports/augment.json."""
    if not paths.labels.exists():
        raise FileNotFoundError(f"{paths.labels}: run the reputation agent first")
    labels = pd.read_parquet(paths.labels)
    classes = list(params.data.classes)
    checks = gold_checks(pd.read_parquet(paths.gold) if paths.gold.exists() else None, classes)
    train, valid, stats = build_train_valid(labels, classes, params.augment, checks)
    io.write_parquet(paths.train, train)
    io.write_parquet(paths.valid, valid)
    lines = ["# Augment", "",
             (f"{stats['n_items']} items: {stats['n_train_items']} train, {stats['n_valid']} valid (never augmented; "
              f"{stats['n_valid_gold']} gold check items with their expert labels)."),
             (f"Thin classes: {', '.join(stats['thin_classes']) or 'none'}; "
              f"{stats['n_augmented']} augmented rows added."),
             "", "| class | train before | train after | valid |", "|---|---|---|---|"]
    lines += [f"| {c} | {stats['counts_before'][c]} | {stats['counts_after'][c]} | {stats['valid_counts'][c]} |"
              for c in params.data.classes]
    return write_report(paths, "augment", stats, "\n".join(lines))
