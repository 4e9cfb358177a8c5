"""The market's one shared feature space: mean-pooled, L2-normalised all-MiniLM-L6-v2 embeddings.

Specifications of different models are comparable only if they live in the same space, so the space
is the packaged encoder as shipped (never a fine-tuned backbone) and its name travels with every
specification (:data:`FEATURE_SPACE`); search refuses a specification from another space.
Normalising puts every text on the unit sphere, so squared distances lie in [0, 4] whatever the
corpus, and one kernel bandwidth (:mod:`crowdforge.market.spec`) serves every model.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from crowdforge.modeling.backbone import PACKAGED_MINILM, resolve_backbone

#: Recorded in every specification; a different value means a different space (not comparable).
FEATURE_SPACE = "all-MiniLM-L6-v2/mean-pool/l2/len128"
MAX_LENGTH = 128  # tokens: the encoder's training length; longer texts are cut


@lru_cache(maxsize=1)
def _encoder() -> tuple[Any, Any]:
    from transformers import AutoModel, AutoTokenizer

    path = resolve_backbone(PACKAGED_MINILM)
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def embed(texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """``(n, 384)`` float64 unit vectors, one per text, in order (pairs encoded as pairs)."""
    from crowdforge.modeling.inference import encode_texts

    if not len(texts):
        return np.zeros((0, 384))
    tokenizer, encoder = _encoder()
    x = encode_texts(encoder, tokenizer, [str(t) for t in texts], MAX_LENGTH, batch_size).astype(np.float64)
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)
