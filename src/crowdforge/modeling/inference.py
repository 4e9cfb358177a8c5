"""The shipped ensemble: load it from one folder and predict class probabilities for raw texts.

This module is what the MLflow pyfunc wraps and serves, so it depends only on torch,
transformers, numpy and pandas (never on ``crowdforge.config`` or the agents).

Every member is a mean-pooled transformer encoder followed by a linear head, or (pair tasks) a
text model that scores the raw texts itself (:mod:`crowdforge.modeling.pair_features`). Members that
share an encoder (the ``head`` members all use the pretrained encoder) share one forward pass. The
ensemble probability is ``p(y|x) = sum_k w_k softmax(z_k(x) / T_k)`` with member weights ``w`` on
the simplex and per-member temperatures ``T_k > 0`` (temperature scaling, Guo et al. 2017,
"On Calibration of Modern Neural Networks"), then one temperature ``T`` of the mixture itself,
``p(y|x) ∝ (sum_k ...)^(1/T)``: a mixture of calibrated members is under-confident wherever they
disagree, so the ensemble is calibrated again after combining (Wu & Gales 2021, "Should Ensemble
Members Be Calibrated?"; Rahaman & Thiery 2021, "Uncertainty Quantification and Deep Ensembles").

Folder layout (``ensemble.json`` is the index)::

    ensemble.json           classes, max_length, the mixture's temperature, members (name, encoder
                            key, head file, T, w)
    tokenizer/              one tokenizer (every member derives from the same backbone); a text
                            holding ``[SEP]`` is encoded as a pair (crowdforge.modeling.tokens)
    encoders/<key>/         each distinct encoder once (save_pretrained, loadable by AutoModel)
    heads/<i>-<name>.safetensors   {"weight": (C, H), "bias": (C,)}
    text_models/<i>-<name>.skops   a text model's fitted scikit-learn parts (no pickle)
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from crowdforge.modeling.pair_features import PairSimilarityModel
from crowdforge.modeling.tokens import length_batches, pad_ids, token_ids

FORMAT = "crowdforge-ensemble/1"
#: Arithmetic of the encoders' forward passes: ``fp32`` (as trained), ``bf16`` (bfloat16 autocast)
#: or ``int8`` (dynamic int8 quantisation of the Linear layers). Speed-ups and how many labels change
#: are measured in BENCHMARKS.md (inference throughput): on SST-2, bf16 5.3x with 0.1 % of labels
#: changed, int8 3.9x with 7.9 % changed, at one thread.
PRECISIONS = ("fp32", "bf16", "int8")
#: The served model and ``crowdforge predict`` read the precision from this environment variable.
PRECISION_ENV = "CROWDFORGE_PRECISION"


def mean_pool(last_hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average the token vectors of the real (non-padding) tokens: the sentence-transformers pooling."""
    mask = attention_mask.unsqueeze(-1).to(last_hidden.dtype)
    return (last_hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


@torch.inference_mode()
def encode_ids(encoder: torch.nn.Module, ids: Sequence[Sequence[int]], pad_id: int, batch_size: int = 64) -> np.ndarray:
    """Mean-pooled embeddings ``(n, hidden)`` float32 of token id lists, in their order; batches of
    similar length, inference mode, eval mode (restored afterwards)."""
    was_training = encoder.training
    encoder.eval()
    out = np.zeros((len(ids), int(encoder.config.hidden_size)), dtype=np.float32)
    try:
        for idx in length_batches([len(x) for x in ids], batch_size):
            input_ids, mask = pad_ids([ids[i] for i in idx], pad_id)
            h = encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
            out[idx] = mean_pool(h, mask).float().numpy()
    finally:
        encoder.train(was_training)
    return out


def encode_texts(
    encoder: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    max_length: int,
    batch_size: int = 64,
) -> np.ndarray:
    """Mean-pooled embeddings ``(n, hidden)`` of texts (pairs encoded as pairs, :mod:`.tokens`)."""
    return encode_ids(encoder, token_ids(tokenizer, texts, max_length), tokenizer.pad_token_id or 0, batch_size)


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def temper(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)``: sharper for ``T < 1``, flatter for ``T > 1``; ``p`` itself at 1."""
    if temperature == 1.0:
        return probs
    return softmax(np.log(np.clip(probs, 1e-300, None)) / temperature)


@dataclass
class Member:
    """One linear head on top of one of the ensemble's encoders, or a ``text_model`` (``encoder`` None)."""

    name: str
    encoder: str | None  # key into Ensemble.encoders
    weight: np.ndarray | None = None  # (C, H) float32
    bias: np.ndarray | None = None  # (C,) float32
    temperature: float = 1.0
    ensemble_weight: float = 1.0
    meta: dict[str, Any] = field(default_factory=dict)
    text_model: PairSimilarityModel | None = None

    @property
    def n_outputs(self) -> int:
        return self.text_model.n_classes if self.text_model is not None else int(self.weight.shape[0])

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        return embeddings @ self.weight.T + self.bias


class Ensemble:
    """Weighted, temperature-scaled average of mean-pooled-encoder + linear-head members."""

    def __init__(
        self,
        classes: Sequence[str],
        tokenizer: Any,
        encoders: dict[str, torch.nn.Module],
        members: Sequence[Member],
        max_length: int,
        batch_size: int = 64,
        decision_bias: Sequence[float] | None = None,
        temperature: float = 1.0,
    ) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member")
        for m in members:
            if m.text_model is None and m.encoder not in encoders:
                raise ValueError(f"member {m.name!r} uses unknown encoder {m.encoder!r}")
            if m.n_outputs != len(classes):
                raise ValueError(f"member {m.name!r} has {m.n_outputs} outputs, not {len(classes)}")
        self.classes: list[str] = list(classes)
        self.tokenizer = tokenizer
        self.encoders = encoders
        self.members: list[Member] = list(members)
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        # added to log p before the arg-max that picks the label (a decision threshold fitted on
        # expert labels for imbalanced classes); the probabilities themselves stay calibrated
        self.decision_bias = np.zeros(len(self.classes)) if decision_bias is None else np.asarray(decision_bias, float)
        self.temperature = float(temperature)  # of the mixture, after the members' own (module docstring)
        for enc in self.encoders.values():
            enc.eval()
        self.precision = "fp32"

    def set_precision(self, precision: str) -> Ensemble:
        """Switch the encoders' arithmetic (:data:`PRECISIONS`); ``int8`` quantises them in place, once."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        if precision != self.precision and self.precision == "int8":
            raise ValueError("an int8-quantised ensemble cannot go back: load it again")
        if precision == "int8" and self.precision != "int8":
            import warnings

            # torch deprecates torch.ao.quantization in favour of torchao (not installed here); the
            # API still works in torch 2.13, and its warnings say nothing a user of crowdforge can act on
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.filterwarnings("ignore", message=".*quantiz.*deprecated", category=UserWarning)
                from torch.ao.quantization import quantize_dynamic

                self.encoders = {k: quantize_dynamic(e, {torch.nn.Linear}, dtype=torch.qint8, inplace=False)
                                 for k, e in self.encoders.items()}
        self.precision = precision
        return self

    # --- prediction -------------------------------------------------------------------------
    def embeddings(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """One forward pass per distinct encoder that some member uses; the texts are tokenized once."""
        used = {m.encoder for m in self.members if m.text_model is None}
        if not used:
            return {}
        ids = token_ids(self.tokenizer, list(texts), self.max_length)
        pad = self.tokenizer.pad_token_id or 0
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            return {key: encode_ids(enc, ids, pad, self.batch_size) for key, enc in self.encoders.items()
                    if key in used}

    def member_logits(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Uncalibrated logits ``(n, C)`` of every member."""
        emb = self.embeddings(texts)
        return {m.name: m.text_model.logits(texts) if m.text_model is not None else m.logits(emb[m.encoder])
                for m in self.members}

    def combine(self, logits: dict[str, np.ndarray]) -> np.ndarray:
        """``sum_k w_k softmax(z_k / T_k)`` with the weights renormalised to sum to one, tempered by
        the mixture's temperature: ``softmax(log p / T)``."""
        return temper(self.mixture(logits), self.temperature)

    def mixture(self, logits: dict[str, np.ndarray]) -> np.ndarray:
        """``sum_k w_k softmax(z_k / T_k)`` (weights renormalised), before the mixture's temperature."""
        w = np.array([m.ensemble_weight for m in self.members], dtype=np.float64)
        w = w / w.sum()
        probs = sum(
            wk * softmax(logits[m.name].astype(np.float64) / m.temperature)
            for wk, m in zip(w, self.members)
        )
        return np.asarray(probs)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities ``(n, C)`` in the order of :attr:`classes`."""
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, len(self.classes)))
        return self.combine(self.member_logits(texts))

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """Class index per row: ``argmax(log p + decision_bias)``."""
        if not len(probs):
            return np.zeros(0, dtype=int)
        return (np.log(np.clip(probs, 1e-12, None)) + self.decision_bias).argmax(axis=1)

    def predict(self, texts: Sequence[str]) -> pd.DataFrame:
        """``label``, ``confidence`` (the probability of that label) and one ``prob_<class>`` column per class."""
        probs = self.predict_proba(texts)
        top = self.decide(probs)
        df = pd.DataFrame(
            {
                "label": [self.classes[i] for i in top],
                "confidence": probs[np.arange(len(probs)), top] if len(probs) else np.zeros(0),
            }
        )
        for j, c in enumerate(self.classes):
            df[f"prob_{c}"] = probs[:, j]
        return df

    # --- persistence ------------------------------------------------------------------------
    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write a self-contained folder (see the module docstring). ``path`` should be empty."""
        from safetensors.numpy import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if self.tokenizer is not None:  # None when every member is a text model
            self.tokenizer.save_pretrained(path / "tokenizer")
        used = sorted({m.encoder for m in self.members if m.text_model is None})
        for key in used:
            self.encoders[key].save_pretrained(path / "encoders" / key)
        members_json = []
        for i, m in enumerate(self.members):
            stem = f"{i:02d}-{re.sub(r'[^A-Za-z0-9_.-]', '_', m.name)}"
            entry: dict[str, Any] = {"name": m.name, "encoder": m.encoder, "temperature": float(m.temperature),
                                     "weight": float(m.ensemble_weight), "meta": m.meta}
            if m.text_model is not None:
                (path / "text_models").mkdir(exist_ok=True)
                entry["text_model"] = f"text_models/{stem}.skops"
                m.text_model.save(path / entry["text_model"])
            else:
                (path / "heads").mkdir(exist_ok=True)
                entry["head"] = f"heads/{stem}.safetensors"
                save_file({"weight": np.ascontiguousarray(m.weight, dtype=np.float32),
                           "bias": np.ascontiguousarray(m.bias, dtype=np.float32)}, str(path / entry["head"]))
            members_json.append(entry)
        index = {
            "format": FORMAT,
            "classes": self.classes,
            "max_length": self.max_length,
            "batch_size": self.batch_size,
            "decision_bias": [float(b) for b in self.decision_bias],
            "temperature": self.temperature,
            "tokenizer": "tokenizer" if self.tokenizer is not None else None,
            "encoders": {key: f"encoders/{key}" for key in used},
            "members": members_json,
            "weights": {m.name: float(m.ensemble_weight) for m in self.members},
            "temperatures": {m.name: float(m.temperature) for m in self.members},
            **(extra or {}),
        }
        (path / "ensemble.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return path


def load_ensemble(path: str | Path, precision: str = "fp32") -> Ensemble:
    """Load a folder written by :meth:`Ensemble.save` (offline: local files only) for ``precision``."""
    from safetensors.numpy import load_file
    from transformers import AutoModel, AutoTokenizer

    path = Path(path)
    index = json.loads((path / "ensemble.json").read_text(encoding="utf-8"))
    if index.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} folder (format={index.get('format')!r})")
    tokenizer = (AutoTokenizer.from_pretrained(path / index["tokenizer"], local_files_only=True)
                 if index.get("tokenizer") else None)
    encoders = {
        key: AutoModel.from_pretrained(path / rel, local_files_only=True).eval()
        for key, rel in index["encoders"].items()
    }
    members = []
    for m in index["members"]:
        common = {"name": m["name"], "encoder": m["encoder"], "temperature": float(m["temperature"]),
                  "ensemble_weight": float(m["weight"]), "meta": m.get("meta", {})}
        if m.get("text_model"):
            members.append(Member(**common, text_model=PairSimilarityModel.load(path / m["text_model"])))
        else:
            head = load_file(str(path / m["head"]))
            members.append(Member(**common, weight=head["weight"], bias=head["bias"]))
    return Ensemble(index["classes"], tokenizer, encoders, members, index["max_length"],
                    index.get("batch_size", 64), index.get("decision_bias"),
                    float(index.get("temperature", 1.0))).set_precision(precision)
