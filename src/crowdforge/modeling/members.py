"""The members' shared on-disk format and inputs, used by both the finetune and ensemble agents
(agents never import each other)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crowdforge.config import Params
from crowdforge.modeling.backbone import project_backbone
from crowdforge.paths import Paths

MEMBER_FILE = "member.json"
HEAD_FILE = "head.safetensors"
ENCODER_DIR = "encoder"
FEDERATED_MEMBER = "federated"  # the federated stage's member (models/federated/), named once


def load_split(path: Path, classes: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Texts, soft labels ``(n, C)``, weights ``(n,)`` and hard label indices ``(n,)`` of a split.

    Soft labels are renormalised; missing ``prob_`` columns fall back to one-hot ``label``; the
    hard label is ``label`` when it names a class, else the soft label's argmax.
    """
    df = pd.read_parquet(path)
    classes = list(classes)
    cols = [f"prob_{c}" for c in classes]
    if all(c in df for c in cols):
        q = df[cols].to_numpy(dtype=np.float64)
    else:
        q = np.zeros((len(df), len(classes)))
        q[np.arange(len(df)), [classes.index(l) for l in df["label"]]] = 1.0
    q = np.clip(np.nan_to_num(q), 0, None)
    q = q / np.clip(q.sum(1, keepdims=True), 1e-12, None)
    w = df["weight"].fillna(1.0).to_numpy(dtype=np.float64) if "weight" in df else np.ones(len(df))
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index.get(l, -1) for l in df.get("label", pd.Series([None] * len(df)))])
    y = np.where(y < 0, q.argmax(1), y)
    return df["text"].astype(str).tolist(), q, w, y


def class_balance_factors(q: np.ndarray, w: np.ndarray, mode: str) -> np.ndarray:
    """Per-example weight factors that give every class the same total weight (``balanced``, as
    scikit-learn's ``class_weight="balanced"``, on soft labels: class mass ``m_c = sum_i w_i q_ic``,
    factor ``sum_c q_ic M / (K m_c)``, so the total weight is unchanged); ``auto`` does so only when
    the training labels are imbalanced (:func:`crowdforge.metrics.is_imbalanced`); ``none``: ones.
    Without it a member trained on 9 "no match" pairs in 10 minimises its loss by answering "no"."""
    from crowdforge.metrics import is_imbalanced

    if mode not in ("auto", "balanced", "none"):
        raise ValueError(f"finetune.class_weight must be auto|balanced|none, got {mode!r}")
    n, k = q.shape
    if mode == "none" or (mode == "auto" and not is_imbalanced(q.argmax(1), k)):
        return np.ones(n)
    mass = np.clip((w[:, None] * q).sum(0), 1e-12, None)
    return q @ (mass.sum() / (k * mass))


def valid_gold_mask(path: Path) -> np.ndarray:
    """Which rows of a split carry an expert (gold check) label; all False without a ``gold`` column."""
    df = pd.read_parquet(path)
    return df["gold"].fillna(False).to_numpy(dtype=bool) if "gold" in df else np.zeros(len(df), dtype=bool)


def encoder_source(paths: Paths, params: Params) -> tuple[str, dict[str, Any]]:
    """The encoder members start from: models/pretrained/ when pretrain ran, else the base backbone."""
    if (paths.pretrained / "config.json").exists():
        return str(paths.pretrained), {"kind": "pretrained"}
    return project_backbone(params.pretrain.backbone, params, paths), {"kind": "base", "name": params.pretrain.backbone}
