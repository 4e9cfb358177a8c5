from __future__ import annotations

import math
from pathlib import Path

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
    assert report["n_texts"] == len(set(pd.read_parquet(paths.unlabeled)["text"]) | set(pd.read_parquet(paths.accepted)["text"]) - gold_test)

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
