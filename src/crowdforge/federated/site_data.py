"""What a federated site reads: one labels file in its own folder, checked row by row on the site.

A site's folder holds ``labels.csv`` (or ``labels.parquet`` / ``labels.jsonl``) with the columns
``text`` and ``label`` and, optionally, ``confidence`` (the site's own confidence in the label,
0-1, used as the example's weight). A row the site cannot use (empty text, a label outside the
classes, a confidence outside 0-1) is written to ``<site>/quarantine.csv`` with the file, the row
number and the reason, and left out of training: nothing is lost and nothing leaves the site. The
coordinator only learns how many rows were quarantined.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from crowdforge import io

LABEL_FILES = ("labels.csv", "labels.parquet", "labels.jsonl")
QUARANTINE_FILE = "quarantine.csv"


class SiteDataError(ValueError):
    """A site's folder cannot be read at all (no labels file, a missing column)."""


@dataclass(frozen=True)
class SiteData:
    texts: list[str]
    q: np.ndarray  # (n, C) one-hot labels
    w: np.ndarray  # (n,) weights: the site's confidence, 1 without one
    n_quarantined: int
    source: Path


def labels_file(folder: Path) -> Path:
    found = [folder / name for name in LABEL_FILES if (folder / name).exists()]
    if not found:
        raise SiteDataError(f"{folder}: no labels file (expected one of {', '.join(LABEL_FILES)})")
    if len(found) > 1:
        raise SiteDataError(f"{folder}: more than one labels file ({', '.join(p.name for p in found)}); keep one")
    return found[0]


def _read(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".jsonl":
        return pd.read_json(path, lines=True, dtype=False)
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def row_problems(df: pd.DataFrame, classes: Sequence[str]) -> pd.Series:
    """The reason each row cannot be used ("" when it can)."""
    text = df["text"].astype("string").fillna("").str.strip()
    label = df["label"].astype("string").fillna("").str.strip()
    reason = pd.Series("", index=df.index, dtype=object)
    reason[~label.isin(list(classes))] = "label_not_in_classes"
    reason[text == ""] = "missing_text"
    if "confidence" in df:
        conf = pd.to_numeric(df["confidence"], errors="coerce")
        bad = conf.isna() | (conf < 0) | (conf > 1)
        reason[(reason == "") & bad] = "confidence_not_in_0_1"
    return reason


def read_site(folder: str | Path, classes: Sequence[str]) -> SiteData:
    """The site's usable rows; the others go to ``<folder>/quarantine.csv`` (file, row, reason)."""
    folder = Path(folder)
    path = labels_file(folder)
    df = _read(path)
    missing = [c for c in ("text", "label") if c not in df]
    if missing:
        raise SiteDataError(f"{path}: missing column(s) {', '.join(missing)} (have: {', '.join(map(str, df.columns))})")
    reason = row_problems(df, classes)
    bad = reason != ""
    if bad.any():
        first = df.index[bad][0]
        quarantined = df[bad].assign(file=str(path), row=np.flatnonzero(bad.to_numpy()) + 1, reason=reason[bad])
        with io.atomic_path(folder / QUARANTINE_FILE) as tmp:
            quarantined.to_csv(tmp, index=False)
        print(f"{path}: {int(bad.sum())} row(s) quarantined to {folder / QUARANTINE_FILE}, "
              f"first at row {int(np.flatnonzero(bad.to_numpy())[0]) + 1}: {reason[first]}")
    good = df[~bad]
    if good.empty:
        raise SiteDataError(f"{path}: no usable rows ({int(bad.sum())} quarantined, see {folder / QUARANTINE_FILE})")
    index = {c: i for i, c in enumerate(classes)}
    y = good["label"].astype(str).str.strip().map(index).to_numpy(dtype=int)
    q = np.eye(len(classes))[y]
    w = (pd.to_numeric(good["confidence"]).to_numpy(dtype=np.float64) if "confidence" in good
         else np.ones(len(good)))
    return SiteData(good["text"].astype(str).str.strip().tolist(), q, w, int(bad.sum()), path)


def write_site(folder: str | Path, texts: Sequence[str], labels: Sequence[str],
               confidence: Sequence[float] | None = None) -> Path:
    """A site folder with ``labels.csv`` (demo and benchmark sites)."""
    df = pd.DataFrame({"text": list(texts), "label": list(labels)})
    if confidence is not None:
        df["confidence"] = np.round(np.asarray(confidence, dtype=float), 4)
    path = Path(folder) / "labels.csv"
    with io.atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return path
