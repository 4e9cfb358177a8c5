"""The federated member and one site's local training of it (pure torch, no Flower).

The member is the ensemble's ``partial`` model (Howard & Ruder 2018's gradual unfreezing, one
step): the pretrained encoder with its top ``unfreeze_layers`` blocks and a linear head trained,
the embeddings and lower blocks frozen. Only the trainable part travels: the coordinator and the
sites build the same model from the same backbone (:func:`build_member`) and exchange the
trainable tensors in :func:`trainable_names` order. With ``adapter="lora"`` the top blocks stay
frozen too and low-rank adapters on their linear maps train instead (Hu et al. 2021, "LoRA";
through ``peft``), with LoRA+'s faster rate for the B matrices, which cuts the bytes per round by
more than an order of magnitude. Under DP-SGD that is also the better member (Yu et al. 2022,
"Differentially Private Fine-tuning of Language Models"): the noise is added to every trained
number, so fewer of them keep more of the signal.

Local training (:func:`train_local`) is the finetune agent's soft-label loss with the site's
confidences as weights, over the frozen lower blocks' cached states. Options: FedProx's proximal
term (Li et al. 2020, ``mu/2 ||w - w_global||^2``) applied as its proximal map after each step
(stable for any ``mu``, unlike its gradient), and DP-SGD (per-example clipping,
Poisson batches, Gaussian noise; Opacus's ``GradSampleModule`` + ``DPOptimizer``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from crowdforge.federated.job import ADAPTERS, LocalConfig, MemberSpec
from crowdforge.modeling.classifier import (
    FrozenLowerCache,
    MeanPoolClassifier,
    encoder_layers,
    load_encoder,
    new_head,
    run_layers,
    soft_cross_entropy,
)
from crowdforge.modeling.inference import mean_pool
from crowdforge.modeling.tokens import length_batches

# Which linear maps of an adapted block carry adapters (BERT's module names). "all": Dettmers et al.
# 2023 ("QLoRA") found adapters on every linear layer are what matches full fine-tuning. "attention":
# the query and value maps only (Hu et al. 2021), about a quarter of the numbers, which is what DP
# fine-tuning used (Yu et al. 2022): under DP-SGD every trained number takes noise.
LORA_TARGETS = {"all": ("query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"),
                "attention": ("query", "value")}


def build_member(spec: MemberSpec) -> tuple[MeanPoolClassifier, Any]:
    """The member with its trainable part set; identical on every party for the same ``spec``."""
    if spec.adapter not in ADAPTERS:
        raise ValueError(f"federated adapter must be one of {', '.join(ADAPTERS)}, got {spec.adapter!r}")
    torch.manual_seed(spec.seed)  # LoRA's A matrices are drawn from the global generator
    encoder, tokenizer = load_encoder(spec.backbone)
    hidden = int(encoder.config.hidden_size)
    if spec.adapter == "lora":
        from peft import LoraConfig, get_peft_model

        n = len(encoder_layers(encoder))
        k = max(1, min(spec.unfreeze_layers, n))
        cfg = LoraConfig(r=spec.lora_rank, lora_alpha=2 * spec.lora_rank, lora_dropout=0.0,
                         target_modules=list(LORA_TARGETS[spec.lora_targets]),
                         layers_to_transform=list(range(n - k, n)))
        encoder = get_peft_model(encoder, cfg)
    model = MeanPoolClassifier(encoder, new_head(hidden, spec.n_classes, spec.seed))
    model.set_strategy("partial", spec.unfreeze_layers)
    if spec.adapter == "lora":
        for name, p in model.encoder.named_parameters():
            p.requires_grad_("lora_" in name)
    model.eval()
    return model, tokenizer


def merged_encoder(model: MeanPoolClassifier) -> nn.Module:
    """The plain encoder to save (LoRA adapters merged into their weights)."""
    enc = model.encoder
    return enc.merge_and_unload() if hasattr(enc, "merge_and_unload") else enc


def trainable_names(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def get_arrays(model: nn.Module) -> list[np.ndarray]:
    return [p.detach().cpu().numpy().copy() for p in model.parameters() if p.requires_grad]


def set_arrays(model: nn.Module, arrays: Sequence[np.ndarray]) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    if len(params) != len(arrays):
        raise ValueError(f"expected {len(params)} parameter arrays, got {len(arrays)}")
    with torch.no_grad():
        for p, a in zip(params, arrays, strict=True):
            if tuple(p.shape) != tuple(a.shape):
                raise ValueError(f"parameter shape {tuple(a.shape)} != the member's {tuple(p.shape)}")
            p.copy_(torch.from_numpy(np.asarray(a, dtype=np.float32)))


class TopModel(nn.Module):
    """The member above its frozen lower blocks: top blocks + mean pooling + head, on cached states."""

    def __init__(self, model: MeanPoolClassifier) -> None:
        super().__init__()
        layers = encoder_layers(model.encoder)
        self.top = nn.ModuleList(layers[len(layers) - model.n_trainable_layers:])
        self.head = model.head
        self._config_holder = [model.encoder]  # a list, so the encoder is not a submodule

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(mean_pool(run_layers(self._config_holder[0], hidden, mask, self.top), mask))


def frozen_cache(model: MeanPoolClassifier, tokenizer: Any, texts: Sequence[str], max_length: int) -> FrozenLowerCache:
    n = len(encoder_layers(model.encoder))
    return FrozenLowerCache(model.encoder, tokenizer, list(texts), max_length, n - model.n_trainable_layers)


@torch.no_grad()
def predict_logits(model: MeanPoolClassifier, cache: FrozenLowerCache) -> np.ndarray:
    top = TopModel(model).eval()
    z = np.zeros((len(cache.lengths), model.head.out_features), dtype=np.float32)
    for idx in length_batches(cache.lengths, 64):
        z[idx] = top(*cache.batch(idx)).numpy()
    return z


def learning_rate(name: str, cfg: LocalConfig) -> float:
    """A trainable tensor's learning rate, by its name in :class:`TopModel`.

    LoRA's B matrices start at zero and get ``lora_plus_ratio`` times the A matrices' rate: with
    one rate for both, B learns too slowly for the width of the layer (Hayou et al. 2024, "LoRA+:
    Efficient Low Rank Adaptation of Large Models", who recommend a ratio of about 16).
    """
    if name.startswith("head."):
        return cfg.lr_head
    if "lora_B" in name:
        return cfg.lr_backbone * cfg.lora_plus_ratio
    return cfg.lr_backbone


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, math.ceil(n / batch_size))


def train_local(model: MeanPoolClassifier, cache: FrozenLowerCache, q: np.ndarray, w: np.ndarray,
                cfg: LocalConfig, server_round: int) -> dict[str, float]:
    """``cfg.epochs`` epochs of the site's data from the model's current (global) weights, in place.

    Without DP the batches are a seeded shuffle; with DP (``cfg.dp_noise`` > 0) each step is a
    Poisson sample at rate ``batch_size / n`` (what the accountant assumes), every example's
    gradient is clipped to ``dp_max_grad_norm`` and noise is added by Opacus's ``DPOptimizer``.
    Returns the mean training loss and the number of steps taken.
    """
    n = len(cache.lengths)
    top = TopModel(model)
    top.train()
    Q = torch.from_numpy(np.asarray(q, dtype=np.float32))
    W = torch.from_numpy(np.asarray(w, dtype=np.float32))
    named = [(n, p) for n, p in top.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    lrs = [learning_rate(n, cfg) for n, _ in named]
    groups = [{"params": [p for p, lr in zip(params, lrs, strict=True) if lr == rate], "lr": rate}
              for rate in sorted(set(lrs))]
    anchor = [p.detach().clone() for p in params] if cfg.proximal_mu > 0 else None
    rng = np.random.default_rng([cfg.seed, server_round])
    torch.manual_seed(cfg.seed * 7919 + server_round)
    dp = cfg.dp_noise > 0
    if dp:
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer

        net: nn.Module = GradSampleModule(top)
        opt: torch.optim.Optimizer = DPOptimizer(
            torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=0.0), noise_multiplier=cfg.dp_noise,
            max_grad_norm=cfg.dp_max_grad_norm, expected_batch_size=min(cfg.batch_size, n))
    else:
        net = top
        opt = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=0.01)
    rate = min(1.0, cfg.batch_size / n)
    losses: list[float] = []
    steps = 0
    for _ in range(cfg.epochs):
        if dp:
            batches = [np.flatnonzero(rng.random(n) < rate) for _ in range(steps_per_epoch(n, cfg.batch_size))]
        else:
            order = rng.permutation(n)
            batches = [order[i:i + cfg.batch_size] for i in range(0, n, cfg.batch_size)]
        for idx in batches:
            steps += 1
            if len(idx) == 0:  # an empty Poisson batch: nothing to release (the accountant still counts it)
                continue
            t = torch.from_numpy(idx)
            logits = net(*cache.batch(idx))
            per_example = -(Q[t] * torch.log_softmax(logits, dim=-1)).sum(-1) * W[t]
            loss = per_example.mean() if dp else soft_cross_entropy(logits, Q[t], W[t])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if anchor is not None:  # FedProx's term as its proximal map: p <- a + (p - a) / (1 + lr mu)
                with torch.no_grad():
                    for p, a, lr in zip(params, anchor, lrs, strict=True):
                        p.copy_(a + (p - a) / (1.0 + lr * cfg.proximal_mu))
            losses.append(float(loss.detach()))
    if dp:
        net._close()  # remove Opacus's hooks: the model is used (and saved) without them
    model.eval()
    return {"train_loss": float(np.mean(losses)) if losses else float("nan"), "steps": float(steps)}
