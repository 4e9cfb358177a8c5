"""pretrain agent: domain-adaptive masked-LM pretraining (DAPT) on all the project's text.

Continuing masked-LM pretraining of a general encoder on in-domain text before fine-tuning
improves downstream accuracy, most when labels are few (Gururangan et al. 2020, "Don't Stop
Pretraining: Adapt Language Models to Domains and Tasks"). The corpus is the unlabelled text plus
every accepted contributed text, deduplicated; texts of the frozen gold ``test`` split are removed
so that no training step ever sees them, not even without labels.

Dynamic masking (a fresh BERT 80/10/10 mask each time a batch is drawn, as in RoBERTa and
``DataCollatorForLanguageModeling``); a held-out ``eval_fraction`` of the corpus is masked ONCE
with a fixed seed and scored before and after, so the two perplexities are comparable.

reads  data/interim/unlabeled.parquet, data/interim/accepted.parquet, data/interim/gold.parquet
writes models/pretrained/ (AutoModel encoder + tokenizer), reports/pretrain.json
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from crowdforge import io
from crowdforge.config import Params, PretrainParams
from crowdforge.modeling.backbone import resolve_backbone
from crowdforge.paths import Paths
from crowdforge.reports import write_report
from crowdforge.runtime import set_torch_threads


def _norm(text: str) -> str:
    return " ".join(str(text).split()).lower()


def collect_corpus(
    unlabeled: pd.DataFrame | None, accepted: pd.DataFrame | None, gold: pd.DataFrame | None
) -> list[str]:
    """Unlabelled + accepted texts, deduplicated (whitespace/case-insensitively, first kept),
    minus any text equal to a gold ``test`` item's text."""
    forbidden: set[str] = set()
    if gold is not None and len(gold):
        forbidden = {_norm(t) for t in gold.loc[gold["split"] == "test", "text"].dropna()}
    seen: set[str] = set()
    corpus: list[str] = []
    for df in (unlabeled, accepted):
        if df is None or "text" not in df:
            continue
        for t in df["text"].dropna().astype(str):
            key = _norm(t)
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


def pretrain(
    texts: Sequence[str], cfg: PretrainParams, out_dir: Any
) -> dict[str, Any]:
    """Run DAPT on ``texts`` and save the adapted encoder + tokenizer into ``out_dir``."""
    from transformers import set_seed
    from transformers.utils import logging as hf_logging

    start = time.perf_counter()
    set_seed(cfg.seed)
    backbone = resolve_backbone(cfg.backbone)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the freshly initialised MLM head is expected, not news
    try:
        return _pretrain(texts, cfg, out_dir, backbone, start)
    finally:
        hf_logging.set_verbosity(verbosity)


def _pretrain(texts: Sequence[str], cfg: PretrainParams, out_dir: Any, backbone: str, start: float) -> dict[str, Any]:
    from transformers import (
        AutoModel,
        AutoModelForMaskedLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        get_linear_schedule_with_warmup,
    )

    tokenizer = AutoTokenizer.from_pretrained(backbone)
    model = AutoModelForMaskedLM.from_pretrained(backbone)

    train_texts, eval_texts = split_corpus(texts, cfg.eval_fraction, cfg.seed)
    train_feats = _tokenize(tokenizer, train_texts, cfg.max_length)
    eval_feats = _tokenize(tokenizer, eval_texts, cfg.max_length)

    eval_collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=cfg.mlm_probability, seed=cfg.seed + 1)
    eval_batches = [eval_collator(eval_feats[i : i + 64]) for i in range(0, len(eval_feats), 64)]
    ppl_before = perplexity(model, eval_batches)

    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=cfg.mlm_probability, seed=cfg.seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate, weight_decay=0.01)
    steps = cfg.max_steps if train_feats else 0
    sched = get_linear_schedule_with_warmup(opt, max(1, steps // 10), max(1, steps))
    rng = np.random.default_rng(cfg.seed)
    order: list[int] = []
    losses: list[float] = []
    model.train()
    for _ in range(steps):
        if len(order) < cfg.batch_size:
            order += rng.permutation(len(train_feats)).tolist()
        idx, order = order[: cfg.batch_size], order[cfg.batch_size :]
        batch = collator([train_feats[i] for i in idx])  # dynamic masking: new mask every draw
        loss, n = mlm_loss_sum(model, batch)
        if n == 0:
            continue
        (loss / n).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()) / n)
    ppl_after = perplexity(model, eval_batches)

    # Save a plain encoder (what fine-tuning loads with AutoModel): the base model's adapted
    # weights, keeping any part the MLM model lacks (BERT's pooler) from the original backbone.
    encoder = AutoModel.from_pretrained(backbone)
    missing, unexpected = encoder.load_state_dict(model.base_model.state_dict(), strict=False)
    if unexpected or any("pooler" not in k for k in missing):
        raise RuntimeError(f"adapted weights do not fit the encoder: missing={missing} unexpected={unexpected}")
    encoder.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {
        "backbone": cfg.backbone,
        "perplexity_before": ppl_before,
        "perplexity_after": ppl_after,
        "steps": len(losses),
        "train_loss_first": losses[0] if losses else None,
        "train_loss_last": losses[-1] if losses else None,
        "n_texts": len(texts),
        "n_train_texts": len(train_texts),
        "n_eval_texts": len(eval_texts),
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
    with io.atomic_dir(paths.pretrained) as tmp:
        metrics = pretrain(corpus, params.pretrain, tmp)
    metrics["torch_threads"] = threads
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"
    summary = (
        f"# pretrain\n\nDomain-adaptive masked-LM on {metrics['n_texts']} texts "
        f"({metrics['steps']} steps, {metrics['seconds']:.1f} s) from `{params.pretrain.backbone}`.\n\n"
        f"Held-out masked-LM perplexity: {fmt(metrics['perplexity_before'])} -> "
        f"{fmt(metrics['perplexity_after'])} ({metrics['n_eval_texts']} texts, same masks).\n"
    )
    return write_report(paths, "pretrain", metrics, summary)
