"""Texts to token ids, in one place: single texts, and pairs encoded as pairs (a cross-encoder).

A text that holds the separator ``[SEP]`` (or the tokenizer's own separator token) is a *pair*,
such as two product records to match: ``"sony bravia 40 in tv [SEP] bravia kdl-40 lcd"``. It is
tokenized as the tokenizer's pair, ``[CLS] a [SEP] b [SEP]``, with ``longest_first`` truncation:
both records keep their share of ``max_length`` (cutting the joined text would drop the second record
whenever the first is long), and every layer attends across the two. Segment (token type) ids are
left at 0, as for single texts: the ``[SEP]`` token marks the boundary, as in RoBERTa-style pair
encoders.

Only the standard library here (``torch`` is imported where a tensor is made): the served model
(:mod:`crowdforge.modeling.inference`) and the augment agent import this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

PAIR_SEPARATOR = "[SEP]"


def split_pair(text: str, separators: Sequence[str]) -> tuple[str, str | None]:
    """``(a, b)`` split at the first separator found, or ``(text, None)`` for a single text."""
    for sep in separators:
        if sep and sep in text:
            a, b = text.split(sep, 1)
            return a.strip(), b.strip()
    return text, None


def separators(tokenizer: Any) -> tuple[str, ...]:
    """The pair separators a text may hold: ``[SEP]`` and the tokenizer's own separator token."""
    own = getattr(tokenizer, "sep_token", None)
    return tuple(dict.fromkeys(s for s in (PAIR_SEPARATOR, own) if s))


def is_pair(text: str, tokenizer: Any) -> bool:
    return split_pair(text, separators(tokenizer))[1] is not None


def token_ids(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of every text (no padding), pairs as pairs; one tokenizer call per kind."""
    texts = [str(t) for t in texts]
    parts = [split_pair(t, separators(tokenizer)) for t in texts]
    singles = [i for i, (_, b) in enumerate(parts) if b is None]
    pairs = [i for i, (_, b) in enumerate(parts) if b is not None]
    ids: list[list[int]] = [[] for _ in texts]
    if singles:
        enc = tokenizer([texts[i] for i in singles], truncation=True, max_length=max_length)["input_ids"]
        for i, x in zip(singles, enc, strict=True):
            ids[i] = list(x)
    if pairs:
        enc = tokenizer([parts[i][0] for i in pairs], [parts[i][1] for i in pairs],
                        truncation="longest_first", max_length=max_length)["input_ids"]
        for i, x in zip(pairs, enc, strict=True):
            ids[i] = list(x)
    return ids


def pad_ids(ids: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists into ``(input_ids, attention_mask)`` tensors."""
    import torch

    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
        mask[i, : len(x)] = 1
    return input_ids, mask


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Index batches of items of similar token length (less padding, faster CPU forward passes);
    the order is stable, so equal inputs give equal batches."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
