from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crowdforge.agents import pretrain
from crowdforge.config import parse_params
from crowdforge.modeling.toy import write_toy_blackboard
from crowdforge.paths import Paths


def _params(backbone: Path, **pre):
    return parse_params({
        "pretrain": {"backbone": str(backbone), "max_steps": 4, "batch_size": 8, "max_length": 24,
                     "learning_rate": 1e-3, "eval_fraction": 0.2, **pre},
        "runtime": {"torch_threads": 1},
    })


def test_corpus_is_deduplicated_and_excludes_gold_test() -> None:
    unl = pd.DataFrame({"text": ["A b", "a  B", "secret test item", "other", None]})
    acc = pd.DataFrame({"text": ["other", "new one"]})
    gold = pd.DataFrame({"item_id": ["g1", "g2"], "text": ["Secret test item", "check item"],
                         "label": ["x", "y"], "split": ["test", "check"]})
    assert pretrain.collect_corpus(unl, acc, gold) == ["A b", "other", "new one"]


def test_split_is_seeded_and_disjoint() -> None:
    texts = [f"t{i}" for i in range(50)]
    tr, ev = pretrain.split_corpus(texts, 0.1, 3)
    assert len(ev) == 5 and set(tr).isdisjoint(ev) and set(tr) | set(ev) == set(texts)
    assert pretrain.split_corpus(texts, 0.1, 3) == (tr, ev)


def test_run_adapts_and_saves_an_encoder(tiny_backbone: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    paths = Paths(tmp_path)
    write_toy_blackboard(paths, n_train=40, n_unlabeled=60)
    report = pretrain.run(_params(tiny_backbone), paths)

    assert report["steps"] == 4 and report["n_texts"] > 0
    assert math.isfinite(report["perplexity_before"]) and math.isfinite(report["perplexity_after"])
    assert report["perplexity_after"] < report["perplexity_before"]  # lr 1e-3 on a random model
    assert paths.report("pretrain").exists()

    gold_test = set(pd.read_parquet(paths.gold).query("split == 'test'")["text"])
    assert report["n_texts"] == len(set(pd.read_parquet(paths.unlabeled)["text"])
                                    | set(pd.read_parquet(paths.accepted)["text"]) - gold_test)

    enc = AutoModel.from_pretrained(paths.pretrained)
    tok = AutoTokenizer.from_pretrained(paths.pretrained)
    base = AutoModel.from_pretrained(tiny_backbone)
    assert tok.vocab_size == base.config.vocab_size
    w, w0 = enc.encoder.layer[0].attention.self.query.weight, base.encoder.layer[0].attention.self.query.weight
    assert not torch.equal(w, w0)  # adapted, not a copy
    assert torch.equal(enc.pooler.dense.weight, base.pooler.dense.weight)  # kept from the backbone


def test_same_seed_same_result(tiny_backbone: Path, tmp_path: Path) -> None:
    reports = []
    for sub in ("a", "b"):
        paths = Paths(tmp_path / sub)
        write_toy_blackboard(paths, n_train=20, n_unlabeled=30)
        reports.append(pretrain.run(_params(tiny_backbone, max_steps=2), paths))
    assert reports[0]["perplexity_before"] == pytest.approx(reports[1]["perplexity_before"])
    assert reports[0]["perplexity_after"] == pytest.approx(reports[1]["perplexity_after"])


def _corpus(n: int = 60) -> list[str]:
    import numpy as np

    from crowdforge.modeling.toy import toy_texts

    return toy_texts(["negative", "neutral", "positive"] * (n // 3), np.random.default_rng(0))


def _cfg(backbone: Path, **kw):
    return _params(backbone, **kw).pretrain


def test_step_indices_visit_every_text_once_per_epoch() -> None:
    seen = [i for s in range(5) for i in pretrain.step_indices(10, 4, 3, s)]  # 20 draws = 2 epochs
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    assert pretrain.step_indices(10, 4, 3, 2) == pretrain.step_indices(10, 4, 3, 2)


def test_masking_never_touches_special_or_padding_tokens(tiny_backbone: Path) -> None:
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_backbone)
    feats = pretrain._tokenize(tok, ["a b c d e f g h", "x"], 16)
    batch = pretrain.pad_features(tok, feats)
    out = pretrain.mask_tokens(batch, tok, 0.9, torch.Generator().manual_seed(0))
    protected = batch["special_tokens_mask"] | ~batch["attention_mask"].bool()
    assert (out["labels"][protected] == -100).all()
    picked = out["labels"] != -100
    assert picked.any() and torch.equal(out["labels"][picked], batch["input_ids"][picked])


def test_resume_after_a_crash_ends_where_an_uninterrupted_run_ends(tiny_backbone: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    texts = _corpus()
    cfg = _cfg(tiny_backbone, max_steps=6, checkpoint_every=2)
    full = pretrain.pretrain(texts, cfg, tmp_path / "a", checkpoint_dir=tmp_path / "ck-a")

    def crash(step: int) -> None:
        if step == 4:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        pretrain.pretrain(texts, cfg, tmp_path / "b", checkpoint_dir=tmp_path / "ck-b", on_checkpoint=crash)
    assert (tmp_path / "ck-b" / "state.pt").exists() and not (tmp_path / "b" / "config.json").exists()
    resumed = pretrain.pretrain(texts, cfg, tmp_path / "b", checkpoint_dir=tmp_path / "ck-b")
    assert resumed["resumed_from_step"] == 4 and full["resumed_from_step"] == 0
    assert resumed["steps"] == full["steps"] == 6
    assert resumed["perplexity_after"] == pytest.approx(full["perplexity_after"])
    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(np.allclose(wa[k].numpy(), wb[k].numpy(), atol=1e-6) for k in wa)
    assert not (tmp_path / "ck-b" / "state.pt").exists()  # spent after completion


def test_a_checkpoint_of_other_params_is_not_resumed(tiny_backbone: Path, tmp_path: Path) -> None:
    texts = _corpus()

    def crash(step: int) -> None:
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        pretrain.pretrain(texts, _cfg(tiny_backbone, max_steps=4, checkpoint_every=2), tmp_path / "a",
                          checkpoint_dir=tmp_path / "ck", on_checkpoint=crash)
    other = pretrain.pretrain(texts, _cfg(tiny_backbone, max_steps=4, checkpoint_every=2, learning_rate=2e-3),
                              tmp_path / "b", checkpoint_dir=tmp_path / "ck")
    assert other["resumed_from_step"] == 0 and other["steps"] == 4


def test_time_budget_stops_early(tiny_backbone: Path, tmp_path: Path) -> None:
    report = pretrain.pretrain(_corpus(), _cfg(tiny_backbone, max_steps=50, max_seconds=1e-9), tmp_path / "o")
    assert report["stopped_by"] == "max_seconds" and report["steps"] == 0
    assert (tmp_path / "o" / "config.json").exists()


def test_simcse_objective_trains_sentence_embeddings(tiny_backbone: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModel

    paths = Paths(tmp_path)
    write_toy_blackboard(paths, n_train=40, n_unlabeled=60)
    report = pretrain.run(_params(tiny_backbone, objective="simcse", max_steps=6, simcse_temperature=0.1), paths)
    assert report["objective"] == "simcse" and report["eval_metric"] == "simcse_loss"
    assert report["perplexity_before"] is None and report["train_loss_first"] > 0
    assert report["eval_after"] < report["eval_before"]
    enc, base = AutoModel.from_pretrained(paths.pretrained), AutoModel.from_pretrained(tiny_backbone)
    assert not torch.equal(enc.encoder.layer[0].attention.self.query.weight,
                           base.encoder.layer[0].attention.self.query.weight)


def test_unknown_objective_is_an_error(tiny_backbone: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="objective"):
        pretrain.pretrain(_corpus(), _cfg(tiny_backbone, objective="gpt"), tmp_path / "o")
