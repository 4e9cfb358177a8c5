"""finetune agent: transfer the (domain-adapted) encoder into several ensemble members.

Each member in ``params.finetune.members`` is a mean-pooled encoder + linear head trained on the
reputation stage's soft labels (``prob_<class>``), weighted per example (``weight``), with early
stopping on the held-out ``valid`` split. Diversity for the ensemble comes from the transfer
strategy (``head`` / ``partial`` / ``full``, see ``crowdforge.modeling.classifier``), the seed and
optional bootstrap resampling of the training rows (bagging).

``train_member`` trains ONE member (the Prefect flow calls it per member, possibly concurrently in
threads) and returns its ``member.json``; ``write_report`` turns those results (or, without them,
the ``member.json`` files on disk) into reports/finetune.json; ``run`` does both for all members.

reads  data/processed/train_augmented.parquet, data/processed/valid.parquet,
       models/pretrained/ (falls back to ``pretrain.backbone`` if absent)
writes models/members/<name>/ (member.json, head.safetensors, encoder/ only if it was trained),
       reports/finetune.json
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from crowdforge import io
from crowdforge.config import MemberParams, Params
from crowdforge.modeling.backbone import resolve_backbone
from crowdforge.modeling.classifier import (
    FitConfig,
    MeanPoolClassifier,
    cached_embeddings,
    fit_classifier,
    fit_head,
    load_encoder,
    new_head,
)
from crowdforge.paths import Paths
from crowdforge.reports import write_report as _write_report
from crowdforge.runtime import set_torch_threads

MEMBER_FILE = "member.json"
HEAD_FILE = "head.safetensors"
ENCODER_DIR = "encoder"


def member_params(params: Params, name: str) -> MemberParams:
    for m in params.finetune.members:
        if m.name == name:
            return m
    raise KeyError(f"no member {name!r} in finetune.members ({[m.name for m in params.finetune.members]})")


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


def encoder_source(paths: Paths, params: Params) -> tuple[str, dict[str, Any]]:
    """The encoder members start from: models/pretrained/ when pretrain ran, else the base backbone."""
    if (paths.pretrained / "config.json").exists():
        return str(paths.pretrained), {"kind": "pretrained"}
    return resolve_backbone(params.pretrain.backbone), {"kind": "base", "name": params.pretrain.backbone}


def train_member(params: Params, paths: Paths, name: str, threads: int | None = None) -> dict[str, Any]:
    """Train one member and write ``models/members/<name>/`` atomically; returns its member.json.

    Torch threads are process-wide: ``threads`` (if given) sets them, else the caller's setting
    (``run``, the CLI or the flow) is kept.
    """
    from safetensors.torch import save_file
    from transformers import set_seed

    start = time.perf_counter()
    threads = set_torch_threads(threads) if threads is not None else torch.get_num_threads()
    m = member_params(params, name)
    ft = params.finetune
    classes = list(params.data.classes)
    seed = ft.seed * 1000 + m.seed
    set_seed(seed)  # dropout; shuffling, bootstrap and head init use their own generators
    cfg = FitConfig(batch_size=ft.batch_size, max_epochs=m.max_epochs or ft.max_epochs,
                    patience=ft.patience, lr_head=ft.lr_head, lr_backbone=ft.lr_backbone, seed=seed)

    texts, q, w, _ = load_split(paths.train, classes)
    v_texts, v_q, _, v_y = load_split(paths.valid, classes)
    # bagging: resample rows with replacement (after caching, so bootstrapped heads reuse the cache)
    rows = (np.random.default_rng(seed).integers(0, len(texts), len(texts)) if m.bootstrap
            else np.arange(len(texts)))

    backbone, source = encoder_source(paths, params)
    if m.strategy == "head":  # the encoder is loaded only on a cache miss
        cache = paths.cache / "embeddings"
        x = cached_embeddings(backbone, texts, ft.max_length, cache)[rows]
        xv = cached_embeddings(backbone, v_texts, ft.max_length, cache)
        hidden = int(x.shape[1])
        head = new_head(hidden, len(classes), seed)
        texts, q, w = [texts[i] for i in rows], q[rows], w[rows]
        n_trainable = sum(p.numel() for p in head.parameters())
        result = fit_head(head, x, q, w, xv, v_y, v_q, cfg)
    else:
        texts, q, w = [texts[i] for i in rows], q[rows], w[rows]
        encoder, tokenizer = load_encoder(backbone)
        hidden = int(encoder.config.hidden_size)
        head = new_head(hidden, len(classes), seed)
        model = MeanPoolClassifier(encoder, head)
        n_trainable = model.set_strategy(m.strategy, m.unfreeze_layers)
        result = fit_classifier(model, tokenizer, texts, q, w, v_texts, v_y, v_q, ft.max_length, cfg)

    info: dict[str, Any] = {
        "name": m.name,
        "strategy": m.strategy,
        "member": asdict(m),
        "seed": seed,
        "classes": classes,
        "max_length": ft.max_length,
        "hidden_size": hidden,
        "head": HEAD_FILE,
        "encoder": {"kind": "trained", "path": ENCODER_DIR} if m.strategy != "head" else source,
        "initial_encoder": source,
        "valid_accuracy": result.valid_accuracy,
        "valid_nll": result.valid_nll,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "max_epochs": cfg.max_epochs,
        "n_train": len(texts),
        "n_valid": len(v_texts),
        "trainable_params": int(n_trainable),
        "examples_seen": result.examples_seen,
        "train_seconds": round(result.seconds, 3),
        "examples_per_s": round(result.examples_seen / max(result.seconds, 1e-9), 1),
        "history": result.history,
        "torch_threads": threads,
    }
    with io.atomic_dir(paths.member(m.name)) as tmp:
        save_file({k: v.detach().contiguous() for k, v in head.state_dict().items()}, str(tmp / HEAD_FILE))
        if m.strategy != "head":
            encoder.save_pretrained(tmp / ENCODER_DIR)
            tokenizer.save_pretrained(tmp / ENCODER_DIR)
        info["seconds"] = round(time.perf_counter() - start, 3)
        io.write_json(tmp / MEMBER_FILE, info)
    return info


def write_report(params: Params, paths: Paths, results: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Write reports/finetune.json from ``train_member`` results (default: the member.json files)."""
    by_name = {r["name"]: r for r in (results or [])}
    members: dict[str, Any] = {}
    for m in params.finetune.members:
        info = by_name.get(m.name) or io.read_json(paths.member(m.name) / MEMBER_FILE)
        members[m.name] = {k: info[k] for k in (
            "strategy", "seed", "valid_accuracy", "valid_nll", "best_epoch", "epochs_run", "n_train",
            "trainable_params", "seconds", "train_seconds", "examples_per_s")}
        members[m.name]["bootstrap"] = m.bootstrap
    best = max(members, key=lambda k: members[k]["valid_accuracy"])
    lines = ["# finetune", "", "| member | strategy | valid acc | epochs | seconds | examples/s |", "|---|---|---|---|---|---|"]
    for k, v in members.items():
        lines.append(f"| {k} | {v['strategy']} | {v['valid_accuracy']:.3f} | {v['epochs_run']} | "
                     f"{v['seconds']:.1f} | {v['examples_per_s']:.0f} |")
    metrics = {"members": members, "best_member": best, "best_valid_accuracy": members[best]["valid_accuracy"],
               "seconds": round(sum(v["seconds"] for v in members.values()), 3)}
    return _write_report(paths, "finetune", metrics, "\n".join(lines))


def run(params: Params, paths: Paths) -> dict[str, Any]:
    """Train every member in turn, then write the report."""
    set_torch_threads(params.runtime.torch_threads)
    results = [train_member(params, paths, m.name) for m in params.finetune.members]
    return write_report(params, paths, results)
