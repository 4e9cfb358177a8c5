from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from crowdforge.modeling import classifier as clf
from crowdforge.modeling.classifier import (
    FitConfig,
    MeanPoolClassifier,
    cached_embeddings,
    fit_head,
    load_encoder,
    new_head,
    soft_cross_entropy,
)


def test_soft_ce_matches_hard_ce_on_one_hot() -> None:
    z = torch.randn(5, 3)
    y = torch.tensor([0, 2, 1, 1, 0])
    q = torch.eye(3)[y]
    assert torch.allclose(soft_cross_entropy(z, q), torch.nn.functional.cross_entropy(z, y))


def test_soft_ce_weights_zero_out_examples() -> None:
    z = torch.randn(4, 3)
    q = torch.softmax(torch.randn(4, 3), -1)
    w = torch.tensor([1.0, 0.0, 2.0, 0.0])
    keep = torch.tensor([0, 2])
    assert torch.allclose(soft_cross_entropy(z, q, w), soft_cross_entropy(z[keep], q[keep], w[keep]))


def test_strategies_freeze_the_right_parameters(tiny_backbone: Path) -> None:
    enc, _ = load_encoder(str(tiny_backbone))
    model = MeanPoolClassifier(enc, new_head(32, 3, 0))
    n_head = model.set_strategy("head")
    n_partial = model.set_strategy("partial", unfreeze_layers=1)
    n_full = model.set_strategy("full")
    assert n_head == 32 * 3 + 3 < n_partial < n_full
    model.set_strategy("partial", unfreeze_layers=1)
    model.train()
    assert not enc.encoder.layer[0].training and enc.encoder.layer[1].training


def test_embeddings_are_cached_and_reused(tiny_backbone: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    texts = ["great service", "awful product", "okay"]
    first = cached_embeddings(str(tiny_backbone), texts, 16, tmp_path)
    assert first.shape == (3, 32) and len(list(tmp_path.glob("*.npy"))) == 1

    def boom(*a, **k):  # a cache hit must not encode again
        raise AssertionError("recomputed")

    monkeypatch.setattr(clf, "encode_texts", boom)
    np.testing.assert_array_equal(cached_embeddings(str(tiny_backbone), texts, 16, tmp_path), first)
    with pytest.raises(AssertionError, match="recomputed"):  # other texts -> other key
        cached_embeddings(str(tiny_backbone), texts[:2], 16, tmp_path)


def _blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centers = np.eye(3, 8) * 4
    return (centers[y] + rng.normal(size=(n, 8))).astype(np.float32), y


def test_fit_head_learns_separable_data() -> None:
    x, y = _blobs(200, 0)
    xv, yv = _blobs(60, 1)
    q, qv = np.eye(3)[y], np.eye(3)[yv]
    head = new_head(8, 3, 0)
    res = fit_head(head, x, q, np.ones(len(x)), xv, yv, qv, FitConfig(batch_size=32, max_epochs=10, lr_head=0.05))
    assert res.valid_accuracy > 0.9
    pred = head(torch.from_numpy(xv)).argmax(-1).numpy()
    assert (pred == yv).mean() == pytest.approx(res.valid_accuracy)  # best state restored


def test_elr_penalty_tracks_the_running_target_and_pulls_toward_it() -> None:
    ema = torch.zeros(4, 2)
    idx = torch.tensor([1, 3])
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]], requires_grad=True)
    clf.elr_penalty(logits, ema, idx, beta=0.5)
    p = torch.softmax(logits.detach(), -1)
    assert torch.allclose(ema[idx], 0.5 * p) and torch.all(ema[[0, 2]] == 0)  # only the batch's rows move
    ema[idx] = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # targets agree with the current predictions
    penalty = clf.elr_penalty(logits, ema, idx, beta=1.0)  # beta=1: targets stay put
    penalty.backward()
    # the penalty falls as each prediction moves toward its target: the gradient raises the target's logit
    assert logits.grad[0, 0] < 0 < logits.grad[0, 1] and logits.grad[1, 1] < 0 < logits.grad[1, 0]


def test_elr_keeps_a_head_closer_to_the_clean_labels_than_the_noisy_ones() -> None:
    x, y = _blobs(300, 0)
    noisy = y.copy()
    flip = np.random.default_rng(0).random(len(y)) < 0.3
    noisy[flip] = (noisy[flip] + 1) % 3
    fits = {}
    for weight in (0.0, 3.0):
        head = new_head(8, 3, 0)
        cfg = FitConfig(batch_size=32, max_epochs=30, patience=30, lr_head=0.05, elr_weight=weight)
        fit_head(head, x, np.eye(3)[noisy], np.ones(len(x)), x, noisy, np.eye(3)[noisy], cfg)
        pred = head(torch.from_numpy(x)).argmax(-1).numpy()
        fits[weight] = (pred == y).mean()
    # 30% of the labels flipped to the next class: plain cross entropy follows them part of the way
    # (0.93 clean accuracy here), ELR much less (0.98)
    assert fits[3.0] > fits[0.0] and fits[3.0] >= 0.95


def test_early_stopping_stops_when_valid_stalls() -> None:
    x, y = _blobs(64, 0)
    head = new_head(8, 3, 0)
    cfg = FitConfig(batch_size=16, max_epochs=20, patience=2, lr_head=0.0)  # nothing can improve
    res = fit_head(head, x, np.eye(3)[y], np.ones(len(x)), x, y, np.eye(3)[y], cfg)
    assert res.best_epoch == 1 and res.epochs_run == 3
    assert [h["epoch"] for h in res.history] == [1, 2, 3]


def test_frozen_lower_cache_matches_the_full_forward(tiny_backbone: Path) -> None:
    from crowdforge.modeling.classifier import FrozenLowerCache, encoder_layers, run_layers
    from crowdforge.modeling.inference import mean_pool

    enc, tok = load_encoder(str(tiny_backbone))
    model = MeanPoolClassifier(enc, new_head(32, 3, 0))
    model.set_strategy("partial", unfreeze_layers=1)
    model.eval()
    texts = ["a short one", "a much longer text with many more words in it", "x"]
    cache = FrozenLowerCache(enc, tok, texts, 16, n_frozen_layers=1)
    h, mask = cache.batch([2, 0, 1])
    with torch.no_grad():
        cached = model.head(mean_pool(run_layers(enc, h, mask, encoder_layers(enc)[1:]), mask))
        batch = tok([texts[i] for i in (2, 0, 1)], padding=True, truncation=True, max_length=16, return_tensors="pt")
        direct = model(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(cached, direct, atol=1e-5, rtol=1e-5)


def test_length_grouped_batches_cover_every_row_once() -> None:
    from crowdforge.modeling.classifier import batch_order

    lengths = np.random.default_rng(0).integers(1, 60, 1000)
    batches = batch_order(1000, 8, np.random.default_rng(1), lengths)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    assert all(len(b) <= 8 for b in batches)
    # less padding than random batches: the mean within-batch length spread shrinks
    spread = lambda bs: np.mean([lengths[b].max() - lengths[b].min() for b in bs])
    assert spread(batches) < 0.2 * spread(batch_order(1000, 8, np.random.default_rng(1)))


def test_cached_and_uncached_partial_training_agree(tiny_backbone: Path) -> None:
    from crowdforge.modeling.toy import toy_texts

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 48)
    texts = toy_texts([["negative", "neutral", "positive"][i] for i in y], rng)
    q, w = np.eye(3)[y], np.ones(48)
    cfg = FitConfig(batch_size=16, max_epochs=2, patience=5, lr_head=0.05, lr_backbone=1e-3, seed=3)
    results = []
    for cache in (True, False):
        enc, tok = load_encoder(str(tiny_backbone))
        model = MeanPoolClassifier(enc, new_head(32, 3, 0))
        model.set_strategy("partial", unfreeze_layers=1)
        results.append(clf.fit_classifier(model, tok, texts, q, w, texts[:12], y[:12], q[:12], 24, cfg,
                                          cache_frozen=cache))
    assert [h["valid_nll"] for h in results[0].history] == pytest.approx(
        [h["valid_nll"] for h in results[1].history], rel=1e-4)


def test_consistency_loss_pulls_augmented_copies_toward_the_plain_texts(tiny_backbone: Path) -> None:
    """FixMatch on: predictions on the augmented copies of the unlabelled texts move closer to the
    model's own predictions on the plain texts than without it (same seed, same labelled data)."""
    from crowdforge.agents.augment import augment_text
    from crowdforge.modeling.toy import toy_texts

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 48)
    texts = toy_texts([["negative", "neutral", "positive"][i] for i in y], rng)
    plain = toy_texts([["negative", "neutral", "positive"][i] for i in rng.integers(0, 3, 64)], rng)
    strong = [augment_text(t, rng, 0.5) for t in plain]
    q, w = np.eye(3)[y], np.ones(48)
    gaps = []
    for weight in (0.0, 5.0):
        cfg = FitConfig(batch_size=16, max_epochs=3, patience=5, lr_head=0.05, lr_backbone=1e-3, seed=3,
                        consistency_weight=weight, consistency_threshold=0.0)
        enc, tok = load_encoder(str(tiny_backbone))
        model = MeanPoolClassifier(enc, new_head(32, 3, 0))
        model.set_strategy("partial", unfreeze_layers=1)
        clf.fit_classifier(model, tok, texts, q, w, texts[:12], y[:12], q[:12], 24, cfg, unlabeled=(plain, strong))
        with torch.no_grad():
            p, s = (torch.softmax(model.head(torch.from_numpy(clf.encode_texts(model.encoder, tok, v, 24))), -1)
                    for v in (plain, strong))
        gaps.append(float((p - s).abs().sum(-1).mean()))
    assert gaps[1] < gaps[0]
