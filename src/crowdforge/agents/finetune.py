"""finetune agent: transfer the (domain-adapted) encoder into several ensemble members.

Each member in ``params.finetune.members`` is a mean-pooled encoder + linear head trained on the
reputation stage's soft labels (``prob_<class>``), weighted per example (``weight``), with early
stopping on the held-out ``valid`` split. Diversity for the ensemble comes from the transfer
strategy (``head`` / ``partial`` / ``full``, see ``crowdforge.modeling.classifier``), the seed and
optional bootstrap resampling (bagging, Breiman 1996) with one of two units:

- ``bootstrap_unit: row``: training rows are drawn with replacement (classic bagging).
- ``bootstrap_unit: contributor``: contributors are drawn with replacement (a cluster bootstrap).
  ``labels.parquet`` has one row per item, so the per-item contributors come from
  ``data/interim/accepted.parquet``; an item's weight is multiplied by the share of its labels whose
  contributor was drawn (counting repeats), so an item only labelled by undrawn contributors drops
  out of that member. The soft labels themselves are not re-inferred. Labels of one contributor are
  correlated (same skill, same biases), so resampling contributors rather than rows gives members
  that disagree where the data depends on a few people, which is what the ensemble should hedge.

Label refinement (``refine_rounds``): before any member trains, the soft labels are combined with
an out-of-fold logistic regression on the frozen encoder's cached embeddings (and, on a pair task,
the pair's similarity features), ``r ∝ p(c | x) q(c) / prior(c)`` (Raykar et al. 2010; see
``crowdforge.modeling.refine``), and example weights follow the refined confidence. With
``refine_workers`` (default) each round also re-estimates every contributor's confusion matrix from
the refined labels and the gold checks (shrunk toward one accuracy per contributor as strongly as
held-out labels say), and the crowd's evidence ``q / prior`` becomes the labels'
likelihood under those matrices: Raykar et al.'s whole EM. ``auto`` runs
the EM map to convergence on pair tasks and two rounds otherwise: to convergence, the training
labels were more accurate on all three sets measured (SST-2 86.6 -> 87.6 %, Abt-Buy 95.2 -> 96.4 %,
Amazon-Google 94.2 -> 95.2 %) and a pair member trained on them much better (valid match F1 33.6 ->
47.6 % on Amazon-Google), but the SST-2 ensemble was 0.55 points worse over three seeds (82.8 vs
83.3 %): its members learnt the sharper labels' mistakes too (BENCHMARKS.md, label refinement). The
refined labels are computed once and cached for every member. Valid labels are
never refined: they are the gold check items' expert labels, or (with too few of those) crowd
labels that the ensemble fits through a noise channel. The logistic regression's strength
(``refine_c``, 0.1) is a number or ``auto``: the value whose out-of-fold predictions give the crowd's
own labels the highest likelihood. ``auto`` moved the training labels' accuracy by -0.4 to +0.2
points on the three benchmark crowds and the SST-2 ensemble by -0.7 (BENCHMARKS.md), so it is an
option.

Tried against label noise and kept as options, off by default, because they did not pay for their cost on SST-2
(BENCHMARKS.md, learning ablations): ``refine_per_member`` (each member its own refinement folds),
``sample_selection: small_loss`` (DivideMix-style clean-probability weights from the refinement's
out-of-fold losses: it also weighs down many right labels, most of all the rare class's) and
``consistency_weight`` > 0 (FixMatch on the unlabelled corpus with the augment agent's offline
augmentation, ``crowdforge.modeling.classifier.fit_classifier``: +0.2 points over three seeds,
inside their spread, for 2.3-2.5x the training time).

Early-learning regularisation (``elr_weight``, Liu et al. 2020, "Early-Learning Regularization
Prevents Memorization of Noisy Labels", NeurIPS): the refined labels are still wrong on some
items, and a member's validation accuracy peaks early as it begins to memorise them. The loss adds
``elr_weight * log(1 - <p_i, t_i>)``, ``t_i`` the
running average of the member's own predictions for item ``i``, which holds later epochs to what
was learnt early; the default is the paper's λ = 3 (the ablation is in BENCHMARKS.md). It applies to members
that train the encoder (``partial``, ``full``): a ``head`` member is a linear model on frozen
features with little room to memorise, and where those features are weak (the tests' tiny random
encoder) anchoring to its slow early predictions only held it back.

``finetune.strategy`` (``null`` by default) forces one strategy on every member, so
``dvc exp run -S finetune.strategy=full`` is a one-key experiment; members keep their names.

Resumable: a member whose folder holds a ``member.json`` with the same fingerprint (member and
finetune params, train/valid content, encoder content) is skipped; ``partial``/``full`` members save
a checkpoint after every epoch under ``.crowdforge/checkpoints/finetune/`` and a re-run after a kill
continues from the last finished epoch (same shuffles, same dropout: see ``_early_stopping``).

``train_member`` trains ONE member (the Prefect flow calls it per member, possibly concurrently in
threads) and returns its ``member.json``; ``write_report`` turns those results (or, without them,
the ``member.json`` files on disk) into reports/finetune.json; ``run`` does both for all members.

reads  data/processed/train_augmented.parquet, data/processed/valid.parquet,
       models/pretrained/ (falls back to ``pretrain.backbone`` if absent),
       data/interim/accepted.parquet (the crowd's labels: ``refine_workers``, ``bootstrap_unit: contributor``)
writes models/members/<name>/ (member.json, head.safetensors, encoder/ only if it was trained),
       reports/finetune.json
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch

from crowdforge import io
from crowdforge.config import MemberParams, Params
from crowdforge.metrics import headline_metric, label_metrics, majority_baseline
from crowdforge.modeling.backbone import backbone_fingerprint
from crowdforge.modeling.classifier import (
    FitConfig,
    FitResult,
    MeanPoolClassifier,
    cached_embeddings,
    encoder_layers,
    fit_classifier,
    fit_head,
    load_encoder,
    new_head,
)
from crowdforge.modeling.members import (
    ENCODER_DIR,
    HEAD_FILE,
    MEMBER_FILE,
    class_balance_factors,
    encoder_source,
    load_split,
    valid_gold_mask,
)
from crowdforge.modeling.pair_features import MODEL_FILE as PAIR_MODEL_FILE
from crowdforge.modeling.pair_features import PairFeaturizer, PairSimilarityModel, is_pair_task
from crowdforge.modeling.refine import (
    CrowdLabels,
    choose_regularisation,
    crowd_labels,
    refine_soft_labels,
    small_loss_weights,
)
from crowdforge.modeling.strategies import strategy
from crowdforge.paths import Paths
from crowdforge.reports import write_report as _write_report
from crowdforge.runtime import set_torch_threads
from crowdforge.truth.dawid_skene import SHRINKAGE_GRID


def effective_members(params: Params) -> tuple[MemberParams, ...]:
    """The members as trained: ``finetune.strategy`` (when set) overrides every encoder member's strategy."""
    forced = params.finetune.strategy
    return tuple(replace(m, strategy=forced) if forced and not strategy(m.strategy).pairs_only else m
                 for m in params.finetune.members)


def member_params(params: Params, name: str) -> MemberParams:
    for m in effective_members(params):
        if m.name == name:
            return m
    raise KeyError(f"no member {name!r} in finetune.members ({[m.name for m in params.finetune.members]})")


def row_bootstrap(n: int, seed: int) -> np.ndarray:
    """Row indices drawn with replacement (bagging)."""
    return np.random.default_rng(seed).integers(0, n, n)


def contributor_bootstrap_weights(item_ids: Sequence[str], accepted: pd.DataFrame | None, seed: int) -> np.ndarray:
    """Per-row weight multipliers from resampling contributors with replacement.

    ``accepted`` gives the ``(contributor_id, item_id)`` pairs. With ``c_j`` the number of times
    contributor ``j`` was drawn, an item labelled by contributors ``J_i`` gets
    ``sum_{j in J_i} c_j / |J_i|`` (expectation 1); items without any contributor row keep 1.
    """
    ids = [str(i) for i in item_ids]
    if accepted is None or accepted.empty:
        return np.ones(len(ids))
    pairs = accepted[["contributor_id", "item_id"]].dropna().astype(str)
    contributors = np.sort(pairs["contributor_id"].unique())
    draws = np.random.default_rng(seed).integers(0, len(contributors), len(contributors))
    count = pd.Series(np.bincount(draws, minlength=len(contributors)), index=contributors)
    per_item = pairs.assign(c=pairs["contributor_id"].map(count)).groupby("item_id")["c"].mean()
    return pd.Series(ids).map(per_item).fillna(1.0).to_numpy(dtype=np.float64)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def member_fingerprint(params: Params, paths: Paths, m: MemberParams, backbone: str) -> str:
    """What a finished member depends on; a member folder with the same fingerprint is reused."""
    ft = {k: v for k, v in asdict(params.finetune).items() if k not in ("members", "strategy", "checkpoint")}
    h = hashlib.sha256(json.dumps({"member": asdict(m), "finetune": ft, "classes": list(params.data.classes)},
                                  sort_keys=True, default=str).encode())
    inputs = [paths.train, paths.valid] + ([paths.accepted] if m.bootstrap and m.bootstrap_unit == "contributor"
                                           else [])
    if params.finetune.consistency_weight > 0:
        inputs += [paths.unlabeled, paths.gold]
    for f in inputs:
        h.update(_file_digest(f).encode() if f.exists() else b"-")
    h.update(backbone_fingerprint(backbone).encode())
    return h.hexdigest()


def finished_member(params: Params, paths: Paths, name: str) -> dict[str, Any] | None:
    """The member.json of ``name`` if it is already trained on exactly the current inputs."""
    file = paths.member(name) / MEMBER_FILE
    if not file.exists():
        return None
    info = io.read_json(file)
    backbone, _ = encoder_source(paths, params)
    return (info if info.get("fingerprint") == member_fingerprint(params, paths, member_params(params, name), backbone)
            else None)


def train_member(params: Params, paths: Paths, name: str, threads: int | None = None,
                 on_epoch: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Train one member and write ``models/members/<name>/`` atomically; returns its member.json.

    Torch threads are process-wide: ``threads`` (if given) sets them, else the caller's setting
    (``run``, the CLI or the flow) is kept. ``on_epoch`` is called after each epoch of a
    ``partial``/``full`` member (after its checkpoint is saved).
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
    texts, q, w, _ = load_split(paths.train, classes)
    v_texts, v_q, _, v_y = load_split(paths.valid, classes)
    cfg = FitConfig(batch_size=ft.batch_size, max_epochs=m.max_epochs or ft.max_epochs,
                    patience=ft.patience, lr_head=ft.lr_head, lr_backbone=ft.lr_backbone, seed=seed,
                    elr_weight=ft.elr_weight if strategy(m.strategy).trains_encoder else 0.0,
                    consistency_weight=ft.consistency_weight if strategy(m.strategy).trains_encoder else 0.0,
                    consistency_threshold=ft.consistency_threshold,
                    select_metric=headline_metric(v_y, len(classes)), name=f"member {m.name}")
    backbone, source = encoder_source(paths, params)
    fingerprint = member_fingerprint(params, paths, m, backbone)
    pairs = is_pair_task(texts)
    refined: dict[str, Any] = {"setting": ft.refine_rounds, "rounds": 0, "changed": 0.0, "pair_features": pairs}
    if strategy(m.strategy).pairs_only and not pairs:
        return not_applicable(paths, m, fingerprint, classes,
                              "the training texts are not pairs (`<record> [SEP] <record>`): a pair member has "
                              "nothing to compare")
    if ft.refine_rounds != 0:  # deterministic, cached features; shared by all members unless refine_per_member
        ref = refine(params, paths, backbone, texts, q, w, seed if ft.refine_per_member else ft.seed)
        r, p_oof = ref.r, ref.p_oof
        refined.update(rounds=len(ref.trace), round_changes=ref.trace, c_reg=ref.c_reg,
                       c_log_likelihood={str(c): v for c, v in ref.c_scores.items()},
                       changed=float((r.argmax(1) != q.argmax(1)).mean()),
                       contributors="re-estimated" if ft.refine_workers else "kept",
                       contributor_shrinkage=ref.shrinkage)
        w = w / np.clip(q.max(1), 1e-12, None) * r.max(1)  # weight follows the refined confidence
        q = r
        if ft.sample_selection == "small_loss" and ref.trace:
            clean = small_loss_weights(p_oof, r, seed)
            w = w * clean
            refined["sample_selection"] = {"mode": ft.sample_selection, "mean_clean_probability": float(clean.mean()),
                                           "items_below_half": int((clean < 0.5).sum())}
    # bagging (after caching, so bootstrapped heads reuse the cache)
    rows = np.arange(len(texts))
    if m.bootstrap and m.bootstrap_unit == "row":
        rows = row_bootstrap(len(texts), seed)
    elif m.bootstrap:
        train_df = pd.read_parquet(paths.train, columns=["item_id", "source_item_id"])
        src = train_df["source_item_id"].fillna(train_df["item_id"]).astype(str)
        accepted = (pd.read_parquet(paths.accepted, columns=["contributor_id", "item_id"])
                    if paths.accepted.exists() else None)
        w = w * contributor_bootstrap_weights(src.tolist(), accepted, seed)
        rows = np.flatnonzero(w > 0)
    balance = class_balance_factors(q[rows], w[rows], ft.class_weight)
    w = w.copy()
    w[rows] = w[rows] * balance

    fallback: dict[str, Any] | None = None
    pair_model: PairSimilarityModel | None = None
    if strategy(m.strategy).pairs_only:
        texts, q, w = [texts[i] for i in rows], q[rows], w[rows]
        hidden, n_trainable, head = 0, 0, None
        result, pair_model = fit_pair_member(texts, q, w, v_texts, v_y, v_q, cfg, len(classes))
    elif strategy(m.strategy).embeddings_only:  # the encoder is loaded only on a cache miss
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
        ckpt = paths.cache / "checkpoints" / "finetune" / f"{m.name}.pt" if ft.checkpoint else None
        unlabeled = consistency_views(params, paths, texts, v_texts, seed) if cfg.consistency_weight > 0 else None

        def fit_encoder_member(member: MemberParams, key: str) -> tuple[Any, Any, Any, int, Any]:
            encoder, tokenizer = load_encoder(backbone)
            head = new_head(int(encoder.config.hidden_size), len(classes), seed)
            model = MeanPoolClassifier(encoder, head)
            n_trainable = model.set_strategy(member.strategy, member.unfreeze_layers)
            result = fit_classifier(model, tokenizer, texts, q, w, v_texts, v_y, v_q, ft.max_length, cfg,
                                    cache_frozen=ft.cache_frozen, checkpoint_path=ckpt, checkpoint_key=key,
                                    on_epoch=on_epoch, unlabeled=unlabeled)
            return model, tokenizer, head, n_trainable, result

        model, tokenizer, head, n_trainable, result = fit_encoder_member(m, fingerprint)
        encoder, hidden = model.encoder, int(model.encoder.config.hidden_size)
        baseline = majority_baseline(v_y, len(classes))[cfg.select_metric]
        trains_all = model.n_trainable_layers == len(encoder_layers(model.encoder))
        if not trains_all and ft.full_if_nothing_learned and result.valid_score <= baseline:
            # the top layers could not learn the task from this encoder: train every layer instead
            fallback = {"from": m.strategy, "valid_score": result.valid_score, "majority_baseline": baseline}
            if ckpt is not None:
                ckpt.unlink(missing_ok=True)
            m = replace(m, strategy="full")
            model, tokenizer, head, n_trainable, result = fit_encoder_member(m, fingerprint + "-full")
            encoder = model.encoder

    info: dict[str, Any] = {
        "name": m.name,
        "strategy": m.strategy,
        "member": asdict(m),
        "fingerprint": fingerprint,
        "label_refinement": refined,
        "seed": seed,
        "classes": classes,
        "max_length": ft.max_length,
        "hidden_size": hidden,
        "head": PAIR_MODEL_FILE if pair_model is not None else HEAD_FILE,
        "encoder": ({"kind": "none"} if pair_model is not None else
                    {"kind": "trained", "path": ENCODER_DIR} if strategy(m.strategy).trains_encoder else source),
        "initial_encoder": source,
        "valid_accuracy": result.valid_accuracy,
        "valid_nll": result.valid_nll,
        "select_metric": cfg.select_metric,
        "valid_score": result.valid_score,
        "class_weight": {"mode": ft.class_weight, "balanced": bool(np.ptp(balance) > 0)},
        "fallback": fallback,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "max_epochs": cfg.max_epochs,
        "n_train": len(texts),
        "n_valid": len(v_texts),
        "trainable_params": int(n_trainable),
        "examples_seen": result.examples_seen,
        "train_seconds": round(result.seconds, 3),
        "examples_per_s": round(result.examples_seen / max(result.seconds, 1e-9), 1),
        "train_examples_per_s": round(result.examples_seen / max(result.train_seconds, 1e-9), 1),
        "seconds_per_epoch": round(result.train_seconds / max(result.epochs_run - result.resumed_from_epoch, 1), 4),
        "resumed_from_epoch": result.resumed_from_epoch,
        "history": result.history,
        "torch_threads": threads,
    }
    with io.atomic_dir(paths.member(m.name)) as tmp:
        if pair_model is not None:
            pair_model.save(tmp / PAIR_MODEL_FILE)
        else:
            save_file({k: v.detach().contiguous() for k, v in head.state_dict().items()}, str(tmp / HEAD_FILE))
        if strategy(m.strategy).trains_encoder:
            encoder.save_pretrained(tmp / ENCODER_DIR)
            tokenizer.save_pretrained(tmp / ENCODER_DIR)
        info["seconds"] = round(time.perf_counter() - start, 3)
        io.write_json(tmp / MEMBER_FILE, info)
    if strategy(m.strategy).trains_encoder and ft.checkpoint:
        ckpt.unlink(missing_ok=True)  # the member is saved: its epoch checkpoint is spent
    return info


class Refinement(NamedTuple):
    """What ``refine`` gives a member: the refined labels and how they came about."""

    r: np.ndarray  # refined soft labels of the train rows
    trace: list[float]  # each round's mean absolute change
    p_oof: np.ndarray  # the last round's out-of-fold probabilities
    c_reg: float  # the logistic regression's inverse regularisation
    c_scores: dict[float, float]  # held-out crowd log-likelihood per C tried (empty when C was given)
    shrinkage: list[float]  # each round's shrinkage of the re-estimated contributors (empty when kept)


def refinement_crowd(paths: Paths, groups: Sequence[str], classes: Sequence[str]) -> CrowdLabels:
    """The accepted crowd labels on the training items and on the gold checks (the valid rows that carry
    an expert label), for the refinement's contributor re-estimation; no other item's labels are used."""
    labels = pd.read_parquet(paths.accepted, columns=["contributor_id", "item_id", "label"])
    valid = pd.read_parquet(paths.valid, columns=["item_id", "label"])[valid_gold_mask(paths.valid)]
    return crowd_labels(labels, groups, classes, dict(zip(valid["item_id"].astype(str), valid["label"].astype(str))))


def refine(params: Params, paths: Paths, backbone: str, texts: Sequence[str], q: np.ndarray,
           w: np.ndarray, seed: int) -> Refinement:
    """The refined soft labels of the train split (``crowdforge.modeling.refine``): the out-of-fold
    classifier sees the frozen encoder's cached embeddings and, on a pair task, the pair's
    standardised similarity features too (the embedding of a joined pair says little about whether
    its two records match); its regularisation is ``refine_c`` or, with ``auto``, the one whose
    out-of-fold predictions explain the crowd labels best. ``seed`` draws the folds."""
    ft = params.finetune
    train_df = pd.read_parquet(paths.train, columns=["item_id", "source_item_id"])
    groups = train_df["source_item_id"].fillna(train_df["item_id"]).astype(str).tolist()
    crowd = refinement_crowd(paths, groups, list(params.data.classes)) if ft.refine_workers else None
    smoothing = params.reputation.smoothing
    key = hashlib.sha256(json.dumps([backbone_fingerprint(backbone), ft.max_length, ft.refine_rounds, ft.refine_folds,
                                     ft.refine_tol, ft.refine_max_rounds, ft.refine_c, seed, list(texts),
                                     groups, smoothing, SHRINKAGE_GRID]).encode())
    key.update(np.ascontiguousarray(q).tobytes() + np.ascontiguousarray(w).tobytes())
    for part in crowd or ():
        key.update(np.ascontiguousarray(part).tobytes())
    cached = paths.cache / "refined" / f"{key.hexdigest()[:32]}.npz"
    if cached.exists():  # members that share the folds refine the same labels: the first one computes them
        with np.load(cached) as f:
            return Refinement(f["r"], [float(c) for c in f["trace"]], f["p_oof"], float(f["c_reg"]),
                              dict(zip(map(float, f["c_grid"]), map(float, f["c_scores"]))),
                              [float(t) for t in f["shrinkage"]])
    x = cached_embeddings(backbone, texts, ft.max_length, paths.cache / "embeddings")
    if is_pair_task(texts):
        f = PairFeaturizer().fit(texts).transform(texts)
        x = np.hstack([x, (f - f.mean(0)) / np.clip(f.std(0), 1e-9, None)])
    trace: list[float] = []
    converge = ft.refine_rounds == "converge" or (ft.refine_rounds == "auto" and is_pair_task(texts))
    rounds = ft.refine_max_rounds if converge else 2 if ft.refine_rounds == "auto" else int(ft.refine_rounds)
    c_reg, c_scores = ((float(ft.refine_c), {}) if ft.refine_c != "auto" else
                       choose_regularisation(x, q, w, groups, ft.refine_folds, seed))
    oof: list[np.ndarray] = [np.full(q.shape, 1.0 / q.shape[1])]
    shrinkage: list[float] = []
    r = refine_soft_labels(x, q, w, groups, rounds, ft.refine_folds, seed, ft.refine_tol if converge else None,
                           trace, oof, c_reg, crowd, smoothing, shrinkage)
    cached.parent.mkdir(parents=True, exist_ok=True)
    with io.atomic_path(cached) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, r=r, trace=np.asarray(trace), p_oof=oof[0], c_reg=c_reg,
                 c_grid=np.asarray(list(c_scores), dtype=float), c_scores=np.asarray(list(c_scores.values())),
                 shrinkage=np.asarray(shrinkage, dtype=float))
    return Refinement(r, trace, oof[0], c_reg, c_scores, shrinkage)


def consistency_views(params: Params, paths: Paths, texts: Sequence[str], v_texts: Sequence[str],
                      seed: int) -> tuple[list[str], list[str]]:
    """The unlabelled texts for FixMatch and their strongly augmented copies: corpus lines that are
    not training, valid or gold texts (the frozen test split stays unseen; matched as the distilled
    student's corpus is, ``ensemble.student_corpus``), at most as many as there are training texts,
    drawn by ``seed``; the augmentation is the augment agent's, with ``consistency_word_dropout``."""
    from crowdforge.agents.augment import augment_text
    from crowdforge.agents.ensemble import student_corpus

    if not paths.unlabeled.exists():
        return [], []
    gold = pd.read_parquet(paths.gold, columns=["text"])["text"].astype(str).tolist() if paths.gold.exists() else []
    corpus = student_corpus([], pd.read_parquet(paths.unlabeled, columns=["text"])["text"].astype(str).tolist(),
                            [*texts, *v_texts, *gold])
    rng = np.random.default_rng([seed, 15])
    pick = sorted(rng.permutation(len(corpus))[: len(set(texts))])
    weak = [corpus[i] for i in pick]
    return weak, [augment_text(t, rng, params.finetune.consistency_word_dropout) for t in weak]


def fit_pair_member(texts: Sequence[str], q: np.ndarray, w: np.ndarray, v_texts: Sequence[str], v_y: np.ndarray,
                    v_q: np.ndarray, cfg: FitConfig, n_classes: int) -> tuple[FitResult, PairSimilarityModel]:
    """Fit a ``pair_features`` member (one fit: boosting is not trained in epochs) and score it on valid."""
    t0 = time.perf_counter()
    model = PairSimilarityModel(n_classes, cfg.seed).fit(texts, q, w)
    seconds = time.perf_counter() - t0
    z = model.logits(v_texts)
    pred = z.argmax(1)
    acc = float((pred == v_y).mean()) if len(v_y) else 0.0
    score = label_metrics(v_y, pred, n_classes)[cfg.select_metric] if len(v_y) else 0.0
    nll = float(-(v_q * z).sum(1).mean()) if len(v_y) else float("nan")
    result = FitResult(best_epoch=1, epochs_run=1, valid_accuracy=acc, valid_nll=nll, examples_seen=len(texts),
                       seconds=seconds, train_seconds=seconds, valid_score=score,
                       history=[{"epoch": 1, "valid_accuracy": acc, "valid_nll": nll, "valid_score": score}])
    return result, model


def not_applicable(paths: Paths, m: MemberParams, fingerprint: str, classes: Sequence[str],
                   reason: str) -> dict[str, Any]:
    """Record (atomically) that member ``m`` does not apply to this data; the ensemble leaves it out."""
    info = {"name": m.name, "strategy": m.strategy, "member": asdict(m), "fingerprint": fingerprint,
            "classes": list(classes), "not_applicable": reason, "seconds": 0.0}
    with io.atomic_dir(paths.member(m.name)) as tmp:
        io.write_json(tmp / MEMBER_FILE, info)
    return info


def write_report(params: Params, paths: Paths, results: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Write reports/finetune.json from ``train_member`` results (default: the member.json files)."""
    by_name = {r["name"]: r for r in (results or [])}
    members: dict[str, Any] = {}
    left_out: dict[str, str] = {}
    for m in effective_members(params):
        info = by_name.get(m.name) or io.read_json(paths.member(m.name) / MEMBER_FILE)
        if info.get("not_applicable"):
            left_out[m.name] = info["not_applicable"]
            continue
        members[m.name] = {k: info.get(k) for k in (
            "strategy", "seed", "valid_accuracy", "valid_nll", "best_epoch", "epochs_run", "n_train",
            "trainable_params", "seconds", "train_seconds", "examples_per_s", "train_examples_per_s",
            "seconds_per_epoch", "resumed_from_epoch", "label_refinement")}
        members[m.name]["bootstrap"] = m.bootstrap and m.bootstrap_unit
        members[m.name]["skipped"] = bool(info.get("skipped", False))
    if not members:
        raise ValueError(f"no member of finetune.members applies to this data: {left_out}")
    best = max(members, key=lambda k: members[k]["valid_accuracy"])
    lines = ["# finetune", "", "| member | strategy | valid acc | epochs | seconds | examples/s |",
             "|---|---|---|---|---|---|"]
    for k, v in members.items():
        lines.append(f"| {k} | {v['strategy']} | {v['valid_accuracy']:.3f} | {v['epochs_run']} | "
                     f"{v['seconds']:.1f} | {v['examples_per_s']:.0f} |")
    lines += [f"\n{k} left out: {why}" for k, why in left_out.items()]
    metrics = {"members": members, "best_member": best, "best_valid_accuracy": members[best]["valid_accuracy"],
               "members_left_out": left_out, "seconds": round(sum(v["seconds"] for v in members.values()), 3)}
    return _write_report(paths, "finetune", metrics, "\n".join(lines))


def run(params: Params, paths: Paths) -> dict[str, Any]:
    """Train every member in turn (skipping members already trained on the same inputs), then
    write the report."""
    set_torch_threads(params.runtime.torch_threads)
    results = []
    for m in effective_members(params):
        done = finished_member(params, paths, m.name)
        results.append({**done, "skipped": True} if done else train_member(params, paths, m.name))
    return write_report(params, paths, results)
