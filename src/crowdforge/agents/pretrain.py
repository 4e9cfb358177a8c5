"""pretrain agent: domain-adaptive pretraining (DAPT) of the encoder on all the project's text.

Continuing masked-LM pretraining of a general encoder on in-domain text before fine-tuning
improves downstream accuracy, most when labels are few (Gururangan et al. 2020, "Don't Stop
Pretraining: Adapt Language Models to Domains and Tasks"). The corpus is the unlabelled text plus
every accepted contributed text, deduplicated; texts of the frozen gold ``test`` split are removed
so that no training step ever sees them, not even without labels.

Objectives (``pretrain.objective``):

- ``mlm``: masked language modelling with dynamic masking (a fresh BERT 80/10/10 mask each time a
  batch is drawn, as in RoBERTa). A held-out ``eval_fraction`` of the corpus is masked ONCE with a
  fixed seed and scored before and after, so the two perplexities are comparable.
- ``simcse``: unsupervised SimCSE (Gao et al. 2021, "SimCSE: Simple Contrastive Learning of
  Sentence Embeddings"): each text is encoded twice with different dropout masks, and the InfoNCE
  loss pulls the two mean-pooled views together and pushes the other texts of the batch away.
  The ``head`` strategy trains on frozen sentence embeddings, so improving those embeddings
  directly is what it needs. The held-out metric is the same contrastive loss with fixed dropout.

Budget: ``max_steps`` optimiser steps, optionally cut short by ``max_seconds`` of wall clock.
Resumable: every ``checkpoint_every`` steps the model, optimiser, scheduler and step are saved in
``.crowdforge/checkpoints/pretrain/`` under a key of (params, corpus, backbone); a re-run after a
kill resumes there. Batch order, masks and dropout depend only on ``(seed, step)``, so a resumed
run ends with the same weights as an uninterrupted one.

reads  data/interim/unlabeled.parquet, data/interim/accepted.parquet, data/interim/gold.parquet
writes models/pretrained/ (AutoModel encoder + tokenizer), reports/pretrain.json
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from crowdforge import io
from crowdforge.config import Params, PretrainParams
from crowdforge.gold import text_key
from crowdforge.modeling.backbone import backbone_fingerprint, project_backbone, resolve_backbone
from crowdforge.modeling.inference import mean_pool
from crowdforge.paths import Paths
from crowdforge.progress import track
from crowdforge.reports import write_report
from crowdforge.runtime import set_torch_threads


def collect_corpus(
    unlabeled: pd.DataFrame | None, accepted: pd.DataFrame | None, gold: pd.DataFrame | None
) -> list[str]:
    """Unlabelled + accepted texts, deduplicated (whitespace/case-insensitively, first kept),
    minus any text equal to a gold ``test`` item's text."""
    forbidden: set[str] = set()
    if gold is not None and len(gold):
        forbidden = {text_key(t) for t in gold.loc[gold["split"] == "test", "text"].dropna()}
    seen: set[str] = set()
    corpus: list[str] = []
    for df in (unlabeled, accepted):
        if df is None or "text" not in df:
            continue
        for t in df["text"].dropna().astype(str):
            key = text_key(t)
            if key and key not in seen and key not in forbidden:
                seen.add(key)
                corpus.append(t.strip())
    return corpus


def split_corpus(texts: Sequence[str], eval_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded train / held-out split; at least one text stays for training."""
    order = np.random.default_rng(seed).permutation(len(texts))
    n_eval = round(eval_fraction * len(texts))
    n_eval = min(max(n_eval, 1 if eval_fraction > 0 and len(texts) > 1 else 0), max(len(texts) - 1, 0))
    return [texts[i] for i in order[n_eval:]], [texts[i] for i in order[:n_eval]]




def _tokenize(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[dict[str, list[int]]]:
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, return_special_tokens_mask=True)
    return [
        {"input_ids": enc["input_ids"][i], "special_tokens_mask": enc["special_tokens_mask"][i]}
        for i in range(len(texts))
    ]


def step_indices(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """The corpus indices of optimiser step ``step`` (0-based): a stream of per-epoch permutations,
    each seeded by ``(seed, epoch)``, cut into consecutive batches. Depends on nothing else, so a
    resumed run draws exactly the batches the uninterrupted run would have."""
    lo, hi = step * batch_size, (step + 1) * batch_size
    out: list[int] = []
    for epoch in range(lo // n, (hi - 1) // n + 1):
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        a, b = max(lo - epoch * n, 0), min(hi - epoch * n, n)
        out += perm[a:b].tolist()
    return out


def pad_features(tokenizer: Any, feats: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    """Right-pad tokenised features: ``input_ids``, ``attention_mask``, ``special_tokens_mask``."""
    width = max(len(f["input_ids"]) for f in feats)
    pad = tokenizer.pad_token_id or 0
    ids = torch.full((len(feats), width), pad, dtype=torch.long)
    att = torch.zeros((len(feats), width), dtype=torch.long)
    special = torch.ones((len(feats), width), dtype=torch.bool)
    for i, f in enumerate(feats):
        n = len(f["input_ids"])
        ids[i, :n] = torch.tensor(f["input_ids"])
        att[i, :n] = 1
        special[i, :n] = torch.tensor(f["special_tokens_mask"], dtype=torch.bool)
    return {"input_ids": ids, "attention_mask": att, "special_tokens_mask": special}


def mask_tokens(batch: dict[str, torch.Tensor], tokenizer: Any, mlm_probability: float,
                generator: torch.Generator) -> dict[str, torch.Tensor]:
    """BERT masking: pick ``mlm_probability`` of the real tokens; of those 80% -> [MASK],
    10% -> a random token, 10% unchanged. ``labels`` is -100 except at picked positions."""
    ids = batch["input_ids"].clone()
    eligible = ~batch["special_tokens_mask"] & batch["attention_mask"].bool()
    picked = (torch.rand(ids.shape, generator=generator) < mlm_probability) & eligible
    labels = torch.where(picked, ids, torch.full_like(ids, -100))
    u = torch.rand(ids.shape, generator=generator)
    to_mask = picked & (u < 0.8)
    to_random = picked & (u >= 0.8) & (u < 0.9)
    ids[to_mask] = tokenizer.mask_token_id
    random_ids = torch.randint(len(tokenizer), ids.shape, generator=generator)
    ids[to_random] = random_ids[to_random]
    return {"input_ids": ids, "attention_mask": batch["attention_mask"], "labels": labels}


def mlm_loss_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed cross entropy over the masked tokens and their count.

    For BERT the vocabulary projection is applied to the masked positions only (about 15 % of
    tokens), which is most of the MLM step's cost on a 30k vocabulary; other models fall back to
    the model's own loss.
    """
    labels = batch["labels"]
    sel = labels != -100
    n = int(sel.sum())
    if n == 0:
        return torch.zeros((), requires_grad=model.training), 0
    if hasattr(model, "bert") and hasattr(model, "cls"):
        h = model.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        logits = model.cls(h[sel])
        return torch.nn.functional.cross_entropy(logits, labels[sel], reduction="sum"), n
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels)
    return out.loss * n, n


def simcse_loss(encoder: torch.nn.Module, batch: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
    """Unsupervised SimCSE InfoNCE: two dropout views of each text; the other view is the positive,
    the other texts' views are negatives. Cosine similarity of mean-pooled embeddings / temperature."""
    ids = torch.cat([batch["input_ids"], batch["input_ids"]])
    att = torch.cat([batch["attention_mask"], batch["attention_mask"]])
    z = mean_pool(encoder(input_ids=ids, attention_mask=att).last_hidden_state, att)
    z = torch.nn.functional.normalize(z, dim=-1)
    n = len(batch["input_ids"])
    sim = z[:n] @ z[n:].T / temperature
    return torch.nn.functional.cross_entropy(sim, torch.arange(n))


@torch.no_grad()
def perplexity(model: torch.nn.Module, batches: Sequence[dict[str, torch.Tensor]]) -> float | None:
    """exp(mean masked-token cross entropy) over pre-masked batches; None without any masked token."""
    model.eval()
    total, count = 0.0, 0
    for b in batches:
        loss, n = mlm_loss_sum(model, b)
        total += float(loss)
        count += n
    return math.exp(total / count) if count else None


@torch.no_grad()
def heldout_simcse_loss(encoder: torch.nn.Module, batches: Sequence[dict[str, torch.Tensor]],
                        temperature: float, seed: int) -> float | None:
    """Mean held-out SimCSE loss with dropout on and seeded (comparable before/after)."""
    if not batches:
        return None
    was = encoder.training
    encoder.train()
    torch.manual_seed(seed)
    losses = [float(simcse_loss(encoder, b, temperature)) for b in batches if len(b["input_ids"]) > 1]
    encoder.train(was)
    return float(np.mean(losses)) if losses else None


def checkpoint_key(cfg: PretrainParams, backbone: str, texts: Sequence[str]) -> str:
    """Identifies a pretraining run: params (minus the budget/checkpoint knobs), backbone, corpus."""
    h = hashlib.sha256()
    fields = {k: v for k, v in asdict(cfg).items() if k not in ("checkpoint_every", "max_seconds")}
    h.update(json.dumps(fields, sort_keys=True).encode())
    h.update(backbone_fingerprint(backbone).encode())
    for t in texts:
        h.update(t.encode("utf-8") + b"\x00")
    return h.hexdigest()


def pretrain(
    texts: Sequence[str], cfg: PretrainParams, out_dir: Any, checkpoint_dir: str | Path | None = None,
    on_checkpoint: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run DAPT on ``texts`` and save the adapted encoder + tokenizer into ``out_dir``.

    With ``checkpoint_dir``, state is saved every ``cfg.checkpoint_every`` steps (then
    ``on_checkpoint(step)`` is called) and a matching checkpoint found there is resumed from.
    """
    from transformers.utils import logging as hf_logging

    start = time.perf_counter()
    backbone = resolve_backbone(cfg.backbone)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the freshly initialised MLM head is expected, not news
    try:
        return _pretrain(texts, cfg, out_dir, backbone, start, checkpoint_dir, on_checkpoint)
    finally:
        hf_logging.set_verbosity(verbosity)


def _pretrain(texts: Sequence[str], cfg: PretrainParams, out_dir: Any, backbone: str, start: float,
              checkpoint_dir: str | Path | None, on_checkpoint: Callable[[int], None] | None) -> dict[str, Any]:
    from transformers import (
        AutoModel,
        AutoModelForMaskedLM,
        AutoTokenizer,
        get_linear_schedule_with_warmup,
    )

    mlm = cfg.objective == "mlm"
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    model = (AutoModelForMaskedLM if mlm else AutoModel).from_pretrained(backbone)

    train_texts, eval_texts = split_corpus(texts, cfg.eval_fraction, cfg.seed)
    train_feats = _tokenize(tokenizer, train_texts, cfg.max_length)
    eval_feats = _tokenize(tokenizer, eval_texts, cfg.max_length)
    eval_padded = [pad_features(tokenizer, eval_feats[i : i + 64]) for i in range(0, len(eval_feats), 64)]
    if mlm:
        g = torch.Generator().manual_seed(cfg.seed + 1)
        eval_batches = [mask_tokens(b, tokenizer, cfg.mlm_probability, g) for b in eval_padded]

        def evaluate() -> float | None:
            return perplexity(model, eval_batches)
    else:
        def evaluate() -> float | None:
            return heldout_simcse_loss(model, eval_padded, cfg.simcse_temperature, cfg.seed + 1)

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate, weight_decay=0.01)
    steps = cfg.max_steps if train_feats else 0
    sched = get_linear_schedule_with_warmup(opt, max(1, steps // 10), max(1, steps))

    ckpt_file = Path(checkpoint_dir) / "state.pt" if checkpoint_dir is not None else None
    key = checkpoint_key(cfg, backbone, texts)
    state = torch.load(ckpt_file, weights_only=False) if ckpt_file is not None and ckpt_file.exists() else None
    if state is not None and state.get("key") == key:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        step0, losses, eval_before, elapsed0 = state["step"], state["losses"], state["eval_before"], state["elapsed"]
    else:
        step0, losses, eval_before, elapsed0 = 0, [], evaluate(), 0.0
    resumed_from = step0

    t0 = time.perf_counter()
    model.train()
    step, stopped_by = step0, "max_steps"
    with track(steps - step, f"pretrain ({cfg.objective})") as advance:
        while step < steps:
            if cfg.max_seconds > 0 and elapsed0 + time.perf_counter() - t0 >= cfg.max_seconds:
                stopped_by = "max_seconds"
                break
            batch = pad_features(tokenizer, [train_feats[i] for i in step_indices(len(train_feats), cfg.batch_size,
                                                                                  cfg.seed, step)])
            torch.manual_seed(cfg.seed * 7919 + step)  # dropout of this step
            if mlm:  # dynamic masking: a new mask every draw, seeded by the step
                batch = mask_tokens(batch, tokenizer, cfg.mlm_probability,
                                    torch.Generator().manual_seed(cfg.seed * 1_000_003 + step))
                loss, n = mlm_loss_sum(model, batch)
                loss = loss / max(n, 1)
            else:
                n = len(batch["input_ids"])
                loss = simcse_loss(model, batch, cfg.simcse_temperature) if n > 1 else torch.zeros(())
            step += 1
            if n and loss.requires_grad:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                losses.append(float(loss.detach()))
            sched.step()
            opt.zero_grad(set_to_none=True)
            advance()
            if ckpt_file is not None and cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0 and step < steps:
                with io.atomic_path(ckpt_file) as tmp:
                    torch.save({"key": key, "step": step, "model": model.state_dict(), "opt": opt.state_dict(),
                                "sched": sched.state_dict(), "losses": losses, "eval_before": eval_before,
                                "elapsed": elapsed0 + time.perf_counter() - t0}, tmp)
                if on_checkpoint is not None:
                    on_checkpoint(step)
    train_seconds = elapsed0 + time.perf_counter() - t0
    eval_after = evaluate()

    if mlm:
        # Save a plain encoder (what fine-tuning loads with AutoModel): the base model's adapted
        # weights, keeping any part the MLM model lacks (BERT's pooler) from the original backbone.
        encoder = AutoModel.from_pretrained(backbone)
        missing, unexpected = encoder.load_state_dict(model.base_model.state_dict(), strict=False)
        if unexpected or any("pooler" not in k for k in missing):
            raise RuntimeError(f"adapted weights do not fit the encoder: missing={missing} unexpected={unexpected}")
    else:
        encoder = model
    encoder.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if ckpt_file is not None:
        ckpt_file.unlink(missing_ok=True)  # the run is complete: its checkpoint is spent
    return {
        "backbone": cfg.backbone,
        "objective": cfg.objective,
        "eval_metric": "mlm_perplexity" if mlm else "simcse_loss",
        "eval_before": eval_before,
        "eval_after": eval_after,
        "perplexity_before": eval_before if mlm else None,
        "perplexity_after": eval_after if mlm else None,
        "steps": step,
        "optimizer_steps": len(losses),
        "stopped_by": stopped_by,
        "resumed_from_step": resumed_from,
        "train_loss_first": losses[0] if losses else None,
        "train_loss_last": losses[-1] if losses else None,
        "n_texts": len(texts),
        "n_train_texts": len(train_texts),
        "n_eval_texts": len(eval_texts),
        "train_seconds": round(train_seconds, 3),
        "seconds": round(time.perf_counter() - start, 3),
    }


def _read(path: Any) -> pd.DataFrame | None:
    return pd.read_parquet(path) if path.exists() else None


def run(params: Params, paths: Paths) -> dict[str, Any]:
    """Read the corpus, pretrain, write models/pretrained/ atomically and reports/pretrain.json."""
    threads = set_torch_threads(params.runtime.torch_threads)
    corpus = collect_corpus(_read(paths.unlabeled), _read(paths.accepted), _read(paths.gold))
    if not corpus:
        raise ValueError("pretrain: no text found in data/interim/unlabeled.parquet or accepted.parquet")
    cfg = replace(params.pretrain, backbone=project_backbone(params.pretrain.backbone, params, paths))
    with io.atomic_dir(paths.pretrained) as tmp:
        metrics = pretrain(corpus, cfg, tmp, checkpoint_dir=paths.cache / "checkpoints" / "pretrain")
    metrics["torch_threads"] = threads
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"
    what = {"mlm": "masked-LM", "simcse": "SimCSE contrastive"}[params.pretrain.objective]
    measure = {"mlm": "masked-LM perplexity", "simcse": "contrastive loss"}[params.pretrain.objective]
    resumed = f", resumed at step {metrics['resumed_from_step']}" if metrics["resumed_from_step"] else ""
    summary = (
        f"# pretrain\n\nDomain-adaptive {what} on {metrics['n_texts']} texts "
        f"({metrics['steps']} steps, stopped by {metrics['stopped_by']}{resumed}, {metrics['seconds']:.1f} s) "
        f"from `{params.pretrain.backbone}`.\n\n"
        f"Held-out {measure}: {fmt(metrics['eval_before'])} -> "
        f"{fmt(metrics['eval_after'])} ({metrics['n_eval_texts']} texts, same masks).\n"
    )
    return write_report(paths, "pretrain", metrics, summary)
