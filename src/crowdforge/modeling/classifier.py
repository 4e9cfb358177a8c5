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

from crowdforge.metrics import label_metrics
from crowdforge.modeling.backbone import backbone_fingerprint
from crowdforge.modeling.inference import encode_texts, mean_pool
from crowdforge.modeling.strategies import strategy as get_strategy
from crowdforge.modeling.tokens import length_batches, pad_ids, token_ids
from crowdforge.progress import track


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
        self.strategy = "full"
        self.n_trainable_layers = len(encoder_layers(encoder))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(mean_pool(h, attention_mask))

    def set_strategy(self, strategy: str, unfreeze_layers: int = 2) -> int:
        """Freeze the encoder according to ``strategy``; returns the number of trainable parameters."""
        spec = get_strategy(strategy)
        self.strategy = strategy
        layers = encoder_layers(self.encoder)
        k = spec.trainable_layers(len(layers), unfreeze_layers)
        self.n_trainable_layers = k
        everything = k == len(layers)
        for p in self.encoder.parameters():
            p.requires_grad_(everything)
        self._frozen = []
        if not everything:  # the embeddings and the lower blocks stay frozen (all of the encoder when k == 0)
            for layer in layers[len(layers) - k :]:
                for p in layer.parameters():
                    p.requires_grad_(True)
            self._frozen = ([self.encoder] if k == 0 else
                            [m for m in (getattr(self.encoder, "embeddings", None), *layers[: len(layers) - k])
                             if m is not None])
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
    h.update(f"|max_length={max_length}|pairs-as-pairs|".encode())  # token_ids encodes [SEP] texts as pairs
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


# --- the partial strategy's frozen-lower-layers cache -------------------------------------------


def run_layers(encoder: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor,
               layers: Sequence[nn.Module]) -> torch.Tensor:
    """Run ``layers`` (a slice of the encoder's blocks) on ``hidden`` with the encoder's own mask."""
    from transformers.masking_utils import create_bidirectional_mask

    mask = create_bidirectional_mask(config=encoder.config, inputs_embeds=hidden, attention_mask=attention_mask)
    for layer in layers:
        out = layer(hidden, mask)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


class FrozenLowerCache:
    """Hidden states after the frozen embeddings + lower blocks, computed once per text.

    With the ``partial`` strategy the embeddings and the lower ``L - k`` blocks never change and run
    without dropout, so their output for a text is a constant: caching it turns every later epoch
    (and every validation pass) into a forward/backward through the top ``k`` blocks only.
    Per-text tensors keep their own length; a batch is re-padded to its longest member.
    """

    def __init__(self, encoder: nn.Module, tokenizer: Any, texts: Sequence[str], max_length: int,
                 n_frozen_layers: int, batch_size: int = 64) -> None:
        self.ids = token_ids(tokenizer, texts, max_length)
        self.lengths = np.array([len(x) for x in self.ids])
        self.hidden_size = int(encoder.config.hidden_size)
        pad = tokenizer.pad_token_id or 0
        lower = encoder_layers(encoder)[:n_frozen_layers]
        self.states: list[torch.Tensor] = [torch.empty(0)] * len(self.ids)
        was_training = encoder.training
        encoder.eval()
        with torch.no_grad():
            for idx in length_batches(self.lengths, batch_size):
                input_ids, mask = pad_ids([self.ids[i] for i in idx], pad)
                h = run_layers(encoder, encoder.embeddings(input_ids=input_ids), mask, lower)
                for row, i in enumerate(idx):
                    self.states[i] = h[row, : self.lengths[i]].clone()
        encoder.train(was_training)

    def state(self) -> dict[str, Any]:
        """What :meth:`from_state` needs (a federated site keeps it in its folder across rounds)."""
        return {"ids": self.ids, "lengths": self.lengths, "hidden_size": self.hidden_size, "states": self.states}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> FrozenLowerCache:
        cache = cls.__new__(cls)
        cache.ids, cache.lengths = state["ids"], np.asarray(state["lengths"])
        cache.hidden_size, cache.states = int(state["hidden_size"]), list(state["states"])
        return cache

    def batch(self, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        width = int(max(self.lengths[i] for i in idx))
        h = torch.zeros((len(idx), width, self.hidden_size))
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            n = int(self.lengths[i])
            h[row, :n] = self.states[i]
            mask[row, :n] = 1
        return h, mask


# --- training with early stopping ---------------------------------------------------------------


@dataclass(frozen=True)
class FitConfig:
    batch_size: int = 32
    max_epochs: int = 6
    patience: int = 2
    lr_head: float = 3e-3
    lr_backbone: float = 5e-5
    seed: int = 0
    temperature: float = 1.0  # the loss sees logits / temperature (distillation, Hinton et al. 2015)
    length_grouped: bool = True  # text strategies: batches of similar length (less padding)
    elr_weight: float = 0.0  # early-learning regularisation (Liu et al. 2020); 0 = off
    elr_beta: float = 0.7  # EMA factor of each example's target in ELR
    select_metric: str = "accuracy"  # early stopping keeps the epoch best on this valid metric (or macro_f1)
    consistency_weight: float = 0.0  # FixMatch loss on unlabelled texts (Sohn et al. 2020); 0 = off
    consistency_threshold: float = 0.95  # FixMatch: pseudo-labels below this confidence are masked out
    name: str = "model"  # what the progress bar calls it


@dataclass
class FitResult:
    best_epoch: int
    epochs_run: int
    valid_accuracy: float
    valid_nll: float
    examples_seen: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0  # time in optimisation steps only (no validation, no caching)
    resumed_from_epoch: int = 0
    valid_score: float = float("nan")  # the best epoch's valid ``FitConfig.select_metric``


def elr_penalty(logits: torch.Tensor, ema: torch.Tensor, idx: torch.Tensor, beta: float,
                weights: torch.Tensor | None = None) -> torch.Tensor:
    """Early-learning regularisation (Liu et al. 2020, "Early-Learning Regularization Prevents
    Memorization of Noisy Labels"): ``log(1 - <p_i, t_i>)`` with ``t_i`` the running average of the
    model's own predictions for example ``i`` (updated in place in ``ema``). Networks fit the clean
    labels first; the term keeps later epochs from pulling predictions away from what was learned
    early, i.e. from memorising the wrong labels."""
    p = torch.softmax(logits, dim=-1).clamp(1e-4, 1 - 1e-4)
    with torch.no_grad():
        pd_ = p.detach()
        ema[idx] = beta * ema[idx] + (1 - beta) * pd_ / pd_.sum(-1, keepdim=True)
    per_example = torch.log((1 - (ema[idx] * p).sum(-1)).clamp(min=1e-6))
    if weights is None:
        return per_example.mean()
    return (per_example * weights).sum() / weights.sum().clamp(min=1e-12)


def _valid_metrics(logits: np.ndarray, y_valid: np.ndarray, q_valid: np.ndarray,
                   metric: str = "accuracy") -> tuple[float, float, float]:
    """(``metric``, NLL, accuracy) of valid logits."""
    z = torch.from_numpy(np.asarray(logits, dtype=np.float32))
    acc = float((z.argmax(-1).numpy() == y_valid).mean()) if len(y_valid) else 0.0
    nll = float(soft_cross_entropy(z, torch.from_numpy(q_valid.astype(np.float32))))
    if metric == "accuracy" or not len(y_valid):
        return acc, nll, acc
    return label_metrics(y_valid, z.argmax(-1).numpy(), z.shape[-1])[metric], nll, acc


def batch_order(n: int, batch_size: int, rng: np.random.Generator,
                lengths: np.ndarray | None = None) -> list[np.ndarray]:
    """One epoch's batches. With ``lengths``: shuffle, sort each mega-batch of ``50 x batch_size``
    by length, cut it into batches and shuffle the batches (as ``LengthGroupedSampler`` in
    transformers), so a padded batch wastes little compute while the epoch stays random."""
    order = rng.permutation(n)
    if lengths is None:
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    mega = 50 * batch_size
    batches: list[np.ndarray] = []
    for i in range(0, n, mega):
        chunk = order[i : i + mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


@dataclass
class EpochCheckpoint:
    """Where ``_early_stopping`` saves its state after every epoch, and how to (re)store the
    model + optimiser part of it. ``key`` must identify the run; a file with another key is ignored."""

    path: Path
    key: str
    get_state: Callable[[], dict[str, Any]]
    set_state: Callable[[dict[str, Any]], None]

    def load(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=False)
        except (OSError, RuntimeError, EOFError, ValueError):  # a torn or foreign file: start over
            return None
        return state if state.get("key") == self.key else None

    def save(self, loop_state: dict[str, Any]) -> None:
        from crowdforge import io

        with io.atomic_path(self.path) as tmp:
            torch.save({"key": self.key, "loop": loop_state, "model": self.get_state()}, tmp)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def _early_stopping(
    n_train: int,
    cfg: FitConfig,
    train_step: Callable[[np.ndarray], None],
    evaluate: Callable[[], tuple[float, float, float]],
    snapshot: Callable[[], Any],
    restore: Callable[[Any], None],
    *,
    lengths: np.ndarray | None = None,
    checkpoint: EpochCheckpoint | None = None,
    on_epoch: Callable[[int], None] | None = None,
) -> FitResult:
    """Epoch loop: batches from a per-epoch generator, step, evaluate on valid, keep the best, stop
    after ``patience`` epochs without improvement (``cfg.select_metric`` first, valid NLL breaks ties;
    macro-F1 on an imbalanced valid split, where accuracy would favour answering the majority class).

    Each epoch's shuffle and dropout are seeded by ``(seed, epoch)`` alone, so a run resumed from
    the checkpoint of epoch ``e`` continues exactly as the uninterrupted run would have.
    ``on_epoch(epoch)`` is called after the epoch's checkpoint is written (progress, or a test
    interrupting the run).
    """
    start = time.perf_counter()
    loop: dict[str, Any] = {"epoch": 0, "best": (-1.0, float("inf")), "best_state": snapshot(),
                            "best_epoch": 0, "bad": 0, "seen": 0, "history": [], "train_seconds": 0.0}
    resumed = 0
    saved = checkpoint.load() if checkpoint else None
    if saved is not None:
        loop = saved["loop"]
        checkpoint.set_state(saved["model"])  # type: ignore[union-attr]
        resumed = int(loop["epoch"])
    epoch = int(loop["epoch"])
    stopped = bool(loop.get("stopped", False))
    while not stopped and epoch < cfg.max_epochs:
        epoch += 1
        rng = np.random.default_rng([cfg.seed, epoch])
        torch.manual_seed(cfg.seed * 7919 + epoch)  # dropout of this epoch
        t0 = time.perf_counter()
        batches = batch_order(n_train, cfg.batch_size, rng, lengths if cfg.length_grouped else None)
        with track(len(batches), f"{cfg.name} epoch {epoch}/{cfg.max_epochs}") as advance:
            for idx in batches:
                train_step(idx)
                loop["seen"] += len(idx)
                advance()
        loop["train_seconds"] += time.perf_counter() - t0
        score, nll, acc = evaluate()
        loop["history"].append({"epoch": epoch, "valid_accuracy": acc, "valid_nll": nll,
                                **({f"valid_{cfg.select_metric}": score} if cfg.select_metric != "accuracy" else {})})
        best = loop["best"]
        if score > best[0] + 1e-12 or (abs(score - best[0]) <= 1e-12 and nll < best[1]):
            loop.update(best=(score, nll), best_state=snapshot(), best_epoch=epoch, bad=0, best_accuracy=acc)
        else:
            loop["bad"] += 1
            stopped = loop["bad"] >= cfg.patience
        loop["epoch"], loop["stopped"] = epoch, stopped
        if checkpoint is not None:
            checkpoint.save(loop)
        if on_epoch is not None:
            on_epoch(epoch)
    restore(loop["best_state"])
    best = loop["best"]
    return FitResult(loop["best_epoch"], epoch, float(loop.get("best_accuracy", best[0])), best[1], loop["seen"],
                     time.perf_counter() - start, loop["history"], loop["train_seconds"], resumed, best[0])


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
    ema = torch.zeros_like(Q)  # ELR targets

    def step(idx: np.ndarray) -> None:
        t = torch.from_numpy(idx)
        logits = head(X[t])
        loss = soft_cross_entropy(logits / cfg.temperature, Q[t], W[t])
        if cfg.elr_weight > 0:
            loss = loss + cfg.elr_weight * elr_penalty(logits, ema, t, cfg.elr_beta, W[t])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    @torch.no_grad()
    def evaluate() -> tuple[float, float, float]:
        return _valid_metrics(head(Xv).numpy(), y_valid, q_valid, cfg.select_metric)

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
    *,
    cache_frozen: bool = True,
    checkpoint_path: str | Path | None = None,
    checkpoint_key: str = "",
    on_epoch: Callable[[int], None] | None = None,
    unlabeled: tuple[Sequence[str], Sequence[str]] | None = None,
) -> FitResult:
    """Train the trainable part of ``model`` (set by ``set_strategy``) end to end on texts.

    Texts are tokenised once; batches group similar lengths. For ``partial`` with ``cache_frozen``
    the frozen lower blocks run once per text (:class:`FrozenLowerCache`), for train and valid.
    With ``checkpoint_path`` the trainable weights, the optimiser and the loop state are saved
    after every epoch and a matching file (same ``checkpoint_key``) is resumed from.

    ``unlabeled`` = (texts, their strongly augmented copies) with ``cfg.consistency_weight`` > 0 adds
    FixMatch's consistency loss (Sohn et al. 2020, "FixMatch: Simplifying Semi-Supervised Learning
    with Consistency and Confidence"): each step also draws as many unlabelled texts as it has
    labelled ones, takes the model's arg-max on the plain text (no gradient) as a pseudo-label where
    its probability reaches ``cfg.consistency_threshold``, and trains the augmented copy towards it.
    The augmentation is offline (the augment agent's word dropout, swaps and synonyms), so the
    frozen-layer cache covers both views.
    """
    texts = list(texts)
    Q, W = (torch.from_numpy(np.asarray(a, dtype=np.float32)) for a in (q_train, w_train))
    ema = torch.zeros_like(Q)  # ELR targets
    head_params = list(model.head.parameters())
    enc_params = [p for p in model.encoder.parameters() if p.requires_grad]
    groups = [{"params": head_params, "lr": cfg.lr_head}]
    if enc_params:
        groups.append({"params": enc_params, "lr": cfg.lr_backbone})
    opt = torch.optim.AdamW(groups, weight_decay=0.01)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    layers = encoder_layers(model.encoder)
    k = model.n_trainable_layers
    use_cache = cache_frozen and 0 < k < len(layers)
    top = layers[len(layers) - k :]

    consistency = unlabeled is not None and cfg.consistency_weight > 0 and len(unlabeled[0]) > 0
    if use_cache:
        train_cache = FrozenLowerCache(model.encoder, tokenizer, texts, max_length, len(layers) - k)
        valid_cache = FrozenLowerCache(model.encoder, tokenizer, list(valid_texts), max_length, len(layers) - k)
        lengths = train_cache.lengths
        if consistency:
            views = [FrozenLowerCache(model.encoder, tokenizer, list(v), max_length, len(layers) - k)
                     for v in unlabeled]  # type: ignore[union-attr]

        def forward(idx: Sequence[int], cache: FrozenLowerCache) -> torch.Tensor:
            h, mask = cache.batch(idx)
            return model.head(mean_pool(run_layers(model.encoder, h, mask, top), mask))
    else:
        ids = token_ids(tokenizer, texts, max_length)
        lengths = np.array([len(x) for x in ids])
        pad = tokenizer.pad_token_id or 0
        if consistency:
            view_ids = [token_ids(tokenizer, list(v), max_length) for v in unlabeled]  # type: ignore[union-attr]

    def view_logits(view: int, idx: Sequence[int]) -> torch.Tensor:
        if use_cache:
            return forward(idx, views[view])
        return model(*pad_ids([view_ids[view][i] for i in idx], pad))

    def consistency_loss(idx: np.ndarray) -> torch.Tensor:
        n_u = len(unlabeled[0])  # type: ignore[index]
        # drawn from the labelled batch itself, so a resumed epoch draws the same unlabelled texts
        u = np.random.default_rng([cfg.seed, 104729, *idx[:2].tolist()]).choice(n_u, min(len(idx), n_u), replace=False)
        model.eval()
        with torch.no_grad():
            p = torch.softmax(view_logits(0, u), dim=-1)
        model.train()
        confidence, pseudo = p.max(-1)
        per_item = nn.functional.cross_entropy(view_logits(1, u), pseudo, reduction="none")
        return (per_item * (confidence >= cfg.consistency_threshold).float()).mean()

    def step(idx: np.ndarray) -> None:
        model.train()
        if use_cache:
            logits = forward(idx, train_cache)
        else:
            input_ids, mask = pad_ids([ids[i] for i in idx], pad)
            logits = model(input_ids, mask)
        t = torch.from_numpy(idx)
        loss = soft_cross_entropy(logits / cfg.temperature, Q[t], W[t])
        if cfg.elr_weight > 0:
            loss = loss + cfg.elr_weight * elr_penalty(logits, ema, t, cfg.elr_beta, W[t])
        if consistency:
            loss = loss + cfg.consistency_weight * consistency_loss(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    @torch.no_grad()
    def evaluate() -> tuple[float, float, float]:
        model.eval()
        if use_cache:
            z = np.zeros((len(valid_texts), model.head.out_features), dtype=np.float32)
            for idx in length_batches(valid_cache.lengths, 64):
                z[idx] = forward(idx, valid_cache).numpy()
        else:
            emb = encode_texts(model.encoder, tokenizer, list(valid_texts), max_length)
            z = model.head(torch.from_numpy(emb)).numpy()
        return _valid_metrics(z, y_valid, q_valid, cfg.select_metric)

    def snapshot() -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in model.named_parameters() if n in trainable}

    def restore(state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in state:
                    p.copy_(state[n])

    ckpt = None
    if checkpoint_path is not None:
        def set_state(state: dict[str, Any]) -> None:
            restore(state["params"])
            opt.load_state_dict(state["opt"])
            if "elr_targets" in state:
                ema.copy_(state["elr_targets"])

        ckpt = EpochCheckpoint(Path(checkpoint_path), checkpoint_key,
                               get_state=lambda: {"params": snapshot(), "opt": opt.state_dict(),
                                                  "elr_targets": ema.clone()},
                               set_state=set_state)
    result = _early_stopping(len(texts), cfg, step, evaluate, snapshot, restore,
                             lengths=lengths, checkpoint=ckpt, on_epoch=on_epoch)
    model.eval()
    return result


__all__ = [
    "EpochCheckpoint", "FitConfig", "FitResult", "FrozenLowerCache", "MeanPoolClassifier",
    "batch_order", "cached_embeddings", "embedding_cache_key", "encoder_layers", "fit_classifier", "fit_head",
    "length_batches", "load_encoder", "new_head", "pad_ids", "run_layers", "soft_cross_entropy",
]
