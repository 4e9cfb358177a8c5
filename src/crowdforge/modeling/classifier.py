"""The member model: a mean-pooled transformer encoder + a linear head, trained on soft labels.

Three transfer strategies (how much of the encoder is trained):

- ``head``: the encoder is frozen, so each text's pooled embedding never changes; it is computed
  once, cached on disk (keyed by the encoder's content hash, ``max_length`` and the texts), and
  only the linear head is trained. Cheap enough to train many diverse heads.
- ``partial``: the last ``k`` transformer layers and the head are trained; lower layers keep the
  general-purpose features (and run without dropout, as frozen feature extractors).
- ``full``: everything is trained.

The loss is the soft-label cross entropy ``-sum_c q_c log p_c`` (``q`` = the reputation stage's
posterior over classes), weighted per example (``weight`` from augment), so an item the crowd
disagreed on pulls the model less toward one class than a unanimous one.
"""

from __future__ import annotations

import copy
import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from crowdforge.modeling.backbone import backbone_fingerprint
from crowdforge.modeling.inference import encode_texts, length_batches, mean_pool

STRATEGIES = ("head", "partial", "full")


def soft_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Weighted mean of ``-sum_c q_c log softmax(z)_c``; weights are normalised by their sum."""
    per_example = -(targets * torch.log_softmax(logits, dim=-1)).sum(-1)
    if weights is None:
        return per_example.mean()
    return (per_example * weights).sum() / weights.sum().clamp(min=1e-12)


def load_encoder(name_or_path: str) -> tuple[nn.Module, Any]:
    """``AutoModel`` + ``AutoTokenizer`` from a local path (offline) or a hub id."""
    from transformers import AutoModel, AutoTokenizer

    local = Path(name_or_path).exists()
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=local)
    encoder = AutoModel.from_pretrained(name_or_path, local_files_only=local)
    return encoder, tokenizer


def new_head(hidden: int, n_classes: int, seed: int) -> nn.Linear:
    """A linear head initialised from its own generator (thread-safe: no global RNG)."""
    g = torch.Generator().manual_seed(seed)
    head = nn.Linear(hidden, n_classes)
    with torch.no_grad():
        head.weight.copy_(torch.randn(n_classes, hidden, generator=g) * 0.02)
        head.bias.zero_()
    return head


def encoder_layers(encoder: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks (BERT/RoBERTa-style ``encoder.layer``)."""
    for attr in ("encoder.layer", "transformer.layer", "layers"):
        obj: Any = encoder
        try:
            for part in attr.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        if isinstance(obj, nn.ModuleList):
            return obj
    raise ValueError(f"cannot find the transformer layers of {type(encoder).__name__}")


class MeanPoolClassifier(nn.Module):
    """``logits = W mean_pool(encoder(x)) + b``."""

    def __init__(self, encoder: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self._frozen: list[nn.Module] = []

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(mean_pool(h, attention_mask))

    def set_strategy(self, strategy: str, unfreeze_layers: int = 2) -> int:
        """Freeze the encoder according to ``strategy``; returns the number of trainable parameters."""
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy {strategy!r} is not one of {STRATEGIES}")
        trainable = strategy == "full"
        for p in self.encoder.parameters():
            p.requires_grad_(trainable)
        self._frozen = []
        if strategy == "partial":
            layers = encoder_layers(self.encoder)
            k = max(0, min(int(unfreeze_layers), len(layers)))
            for layer in layers[len(layers) - k :]:
                for p in layer.parameters():
                    p.requires_grad_(True)
            self._frozen = [m for m in (getattr(self.encoder, "embeddings", None), *layers[: len(layers) - k]) if m is not None]
        elif strategy == "head":
            self._frozen = [self.encoder]
        for p in self.head.parameters():
            p.requires_grad_(True)
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def train(self, mode: bool = True) -> MeanPoolClassifier:
        super().train(mode)
        for m in self._frozen:  # frozen feature extractors run deterministically (no dropout)
            m.eval()
        return self


# --- the head strategy's embedding cache --------------------------------------------------------

_cache_locks: dict[str, threading.Lock] = {}
_cache_locks_guard = threading.Lock()


def embedding_cache_key(backbone: str, texts: Sequence[str], max_length: int) -> str:
    h = hashlib.sha256()
    h.update(backbone_fingerprint(backbone).encode())
    h.update(f"|max_length={max_length}|".encode())
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def cached_embeddings(
    backbone: str,
    texts: Sequence[str],
    max_length: int,
    cache_dir: str | Path,
    *,
    batch_size: int = 64,
    encoder: nn.Module | None = None,
    tokenizer: Any = None,
) -> np.ndarray:
    """Pooled embeddings of ``texts`` under the frozen ``backbone``, computed once and cached.

    The cache file is ``<cache_dir>/<sha256(backbone content, max_length, texts)>.npy``; concurrent
    callers (ensemble members trained in threads) wait for one computation instead of repeating it.
    """
    from crowdforge import io

    texts = list(texts)
    key = embedding_cache_key(backbone, texts, max_length)
    file = Path(cache_dir) / f"{key}.npy"
    with _cache_locks_guard:
        lock = _cache_locks.setdefault(key, threading.Lock())
    with lock:
        if file.exists():
            return np.load(file)
        if encoder is None or tokenizer is None:
            encoder, tokenizer = load_encoder(backbone)
        emb = encode_texts(encoder, tokenizer, texts, max_length, batch_size)
        with io.atomic_path(file) as tmp, tmp.open("wb") as fh:
            np.save(fh, emb)
        return emb


# --- training with early stopping ---------------------------------------------------------------


@dataclass(frozen=True)
class FitConfig:
    batch_size: int = 32
    max_epochs: int = 6
    patience: int = 2
    lr_head: float = 3e-3
    lr_backbone: float = 5e-5
    seed: int = 0


@dataclass
class FitResult:
    best_epoch: int
    epochs_run: int
    valid_accuracy: float
    valid_nll: float
    examples_seen: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def _valid_metrics(logits: np.ndarray, y_valid: np.ndarray, q_valid: np.ndarray) -> tuple[float, float]:
    z = torch.from_numpy(np.asarray(logits, dtype=np.float32))
    acc = float((z.argmax(-1).numpy() == y_valid).mean()) if len(y_valid) else 0.0
    nll = float(soft_cross_entropy(z, torch.from_numpy(q_valid.astype(np.float32))))
    return acc, nll


def _early_stopping(
    n_train: int,
    cfg: FitConfig,
    train_step: Callable[[np.ndarray], None],
    evaluate: Callable[[], tuple[float, float]],
    snapshot: Callable[[], Any],
    restore: Callable[[Any], None],
) -> FitResult:
    """Epoch loop: shuffle (own generator), step, evaluate on valid, keep the best, stop after
    ``patience`` epochs without improvement (accuracy first, valid NLL breaks ties)."""
    rng = np.random.default_rng(cfg.seed)
    start = time.perf_counter()
    best: tuple[float, float] = (-1.0, float("inf"))
    best_state, best_epoch, bad, seen = snapshot(), 0, 0, 0
    history: list[dict[str, float]] = []
    epoch = 0
    for epoch in range(1, cfg.max_epochs + 1):
        order = rng.permutation(n_train)
        for i in range(0, n_train, cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            train_step(idx)
            seen += len(idx)
        acc, nll = evaluate()
        history.append({"epoch": epoch, "valid_accuracy": acc, "valid_nll": nll})
        if acc > best[0] + 1e-12 or (abs(acc - best[0]) <= 1e-12 and nll < best[1]):
            best, best_state, best_epoch, bad = (acc, nll), snapshot(), epoch, 0
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    restore(best_state)
    return FitResult(best_epoch, epoch, best[0], best[1], seen, time.perf_counter() - start, history)


def fit_head(
    head: nn.Linear,
    x_train: np.ndarray,
    q_train: np.ndarray,
    w_train: np.ndarray,
    x_valid: np.ndarray,
    y_valid: np.ndarray,
    q_valid: np.ndarray,
    cfg: FitConfig,
) -> FitResult:
    """Train a linear head on fixed (cached) embeddings with early stopping on valid."""
    X, Q, W = (torch.from_numpy(np.asarray(a, dtype=np.float32)) for a in (x_train, q_train, w_train))
    Xv = torch.from_numpy(np.asarray(x_valid, dtype=np.float32))
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr_head, weight_decay=0.01)

    def step(idx: np.ndarray) -> None:
        t = torch.from_numpy(idx)
        loss = soft_cross_entropy(head(X[t]), Q[t], W[t])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    @torch.no_grad()
    def evaluate() -> tuple[float, float]:
        return _valid_metrics(head(Xv).numpy(), y_valid, q_valid)

    return _early_stopping(
        len(X), cfg, step, evaluate,
        snapshot=lambda: copy.deepcopy(head.state_dict()),
        restore=head.load_state_dict,
    )


def fit_classifier(
    model: MeanPoolClassifier,
    tokenizer: Any,
    texts: Sequence[str],
    q_train: np.ndarray,
    w_train: np.ndarray,
    valid_texts: Sequence[str],
    y_valid: np.ndarray,
    q_valid: np.ndarray,
    max_length: int,
    cfg: FitConfig,
) -> FitResult:
    """Train the trainable part of ``model`` (set by ``set_strategy``) end to end on texts."""
    texts = list(texts)
    Q, W = (torch.from_numpy(np.asarray(a, dtype=np.float32)) for a in (q_train, w_train))
    head_params = list(model.head.parameters())
    enc_params = [p for p in model.encoder.parameters() if p.requires_grad]
    groups = [{"params": head_params, "lr": cfg.lr_head}]
    if enc_params:
        groups.append({"params": enc_params, "lr": cfg.lr_backbone})
    opt = torch.optim.AdamW(groups, weight_decay=0.01)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}

    def step(idx: np.ndarray) -> None:
        model.train()
        batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt")
        t = torch.from_numpy(idx)
        loss = soft_cross_entropy(model(batch["input_ids"], batch["attention_mask"]), Q[t], W[t])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    @torch.no_grad()
    def evaluate() -> tuple[float, float]:
        emb = encode_texts(model.encoder, tokenizer, list(valid_texts), max_length)
        return _valid_metrics(model.head(torch.from_numpy(emb)).numpy(), y_valid, q_valid)

    def snapshot() -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in model.named_parameters() if n in trainable}

    def restore(state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in state:
                    p.copy_(state[n])

    result = _early_stopping(len(texts), cfg, step, evaluate, snapshot, restore)
    model.eval()
    return result


__all__ = [
    "STRATEGIES", "FitConfig", "FitResult", "MeanPoolClassifier", "cached_embeddings",
    "embedding_cache_key", "encoder_layers", "fit_classifier", "fit_head", "length_batches",
    "load_encoder", "new_head", "soft_cross_entropy",
]
