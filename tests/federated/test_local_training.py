from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crowdforge.federated.local_training import (
    LocalConfig,
    MemberSpec,
    TopModel,
    build_member,
    frozen_cache,
    get_arrays,
    learning_rate,
    merged_encoder,
    predict_logits,
    set_arrays,
    train_local,
    trainable_names,
)
from crowdforge.modeling.toy import toy_texts

CLASSES = ["neg", "pos"]


def _data(n: int = 96, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = list(rng.choice(CLASSES, n))
    return toy_texts(labels, rng), np.eye(2)[[CLASSES.index(x) for x in labels]]


@pytest.mark.parametrize("adapter", ["partial", "lora"])
def test_every_party_builds_the_same_member_and_only_the_trainable_part_travels(tiny_backbone: Path,
                                                                                adapter: str) -> None:
    spec = MemberSpec(str(tiny_backbone), 2, unfreeze_layers=1, adapter=adapter, max_length=32, seed=3)
    a, _ = build_member(spec)
    b, _ = build_member(spec)
    assert trainable_names(a) == trainable_names(b)
    for x, y in zip(get_arrays(a), get_arrays(b), strict=True):
        np.testing.assert_array_equal(x, y)
    names = trainable_names(a)
    assert "head.weight" in names
    if adapter == "lora":
        assert all("lora_" in n or n.startswith("head.") for n in names)
    total = sum(p.numel() for p in a.parameters())
    assert sum(x.size for x in get_arrays(a)) < total / 3


def test_local_training_learns_and_lora_sends_far_fewer_numbers(tiny_backbone: Path) -> None:
    texts, q = _data()
    sizes = {}
    for adapter in ("partial", "lora"):  # rank 1: the tiny model is too narrow for rank 8 to save much
        model, tok = build_member(MemberSpec(str(tiny_backbone), 2, adapter=adapter, lora_rank=1, max_length=32))
        before = get_arrays(model)
        cache = frozen_cache(model, tok, texts, 32)
        cfg = LocalConfig(epochs=6, lr_head=0.05, lr_backbone=3e-3)
        out = train_local(model, cache, q, np.ones(len(texts)), cfg, 1)
        acc = float((predict_logits(model, cache).argmax(1) == q.argmax(1)).mean())
        assert acc >= 0.75, (adapter, acc, out)
        assert any(not np.array_equal(x, y) for x, y in zip(before, get_arrays(model), strict=True))
        sizes[adapter] = sum(x.size for x in before)
    assert sizes["partial"] > 5 * sizes["lora"]


def test_lora_plus_gives_the_b_matrices_their_own_faster_rate(tiny_backbone: Path) -> None:
    model, _ = build_member(MemberSpec(str(tiny_backbone), 2, adapter="lora", max_length=32))
    cfg = LocalConfig(lr_head=1e-2, lr_backbone=1e-4, lora_plus_ratio=16.0)
    rates = {n: learning_rate(n, cfg) for n, p in TopModel(model).named_parameters() if p.requires_grad}
    assert {r for n, r in rates.items() if "lora_B" in n} == {1.6e-3}
    assert {r for n, r in rates.items() if "lora_A" in n} == {1e-4}
    assert {r for n, r in rates.items() if n.startswith("head.")} == {1e-2}
    texts, q = _data()
    b_norms = {}
    for ratio in (1.0, 16.0):  # B starts at zero: with the same steps it travels further at the LoRA+ rate
        model, tok = build_member(MemberSpec(str(tiny_backbone), 2, adapter="lora", max_length=32))
        train_local(model, frozen_cache(model, tok, texts, 32), q, np.ones(len(texts)),
                    LocalConfig(epochs=1, lr_backbone=1e-3, lora_plus_ratio=ratio), 1)
        b_norms[ratio] = sum(float(p.norm()) for n, p in model.named_parameters() if "lora_B" in n)
    assert b_norms[16.0] > 4 * b_norms[1.0]


def test_proximal_term_keeps_the_update_nearer_the_global_weights(tiny_backbone: Path) -> None:
    texts, q = _data()
    norms = {}
    for mu in (0.0, 50.0):
        model, tok = build_member(MemberSpec(str(tiny_backbone), 2, max_length=32))
        start = get_arrays(model)
        cache = frozen_cache(model, tok, texts, 32)
        train_local(model, cache, q, np.ones(len(texts)), LocalConfig(epochs=3, lr_head=0.05, proximal_mu=mu), 1)
        norms[mu] = np.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(get_arrays(model), start, strict=True)))
    assert norms[50.0] < norms[0.0]


def test_dp_sgd_runs_on_the_trainable_part_and_leaves_a_plain_model(tiny_backbone: Path) -> None:
    texts, q = _data(64)
    model, tok = build_member(MemberSpec(str(tiny_backbone), 2, adapter="lora", max_length=32))
    cache = frozen_cache(model, tok, texts, 32)
    start = get_arrays(model)
    out = train_local(model, cache, q, np.ones(len(texts)), LocalConfig(epochs=1, dp_noise=1.0), 1)
    assert out["steps"] == 2
    assert any(not np.array_equal(x, y) for x, y in zip(start, get_arrays(model), strict=True))
    assert not any(hasattr(p, "grad_sample") and p.grad_sample is not None for p in model.parameters())
    set_arrays(model, start)
    assert type(merged_encoder(model)).__name__ == "BertModel"
