"""What the market knows about a model: its semantic specification (tags) and statistical one (files).

A registered version carries its semantic specification as version tags ``market.*`` and its
statistical specification as run artifacts under ``spec/`` (:mod:`crowdforge.market.spec`'s files plus
the learnware semantic JSON), so the MLflow registry itself is the market: nothing else to keep in sync.
Learnware zips written by ``crowdforge market export`` are read the same way (:mod:`crowdforge.market.export`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crowdforge.market.spec import SEMANTIC_FILE, StatSpec, load_spec, make_spec, save_spec

TAG = "market."
TASKS = ("text-classification", "pair-classification")


@dataclass(frozen=True)
class SemanticSpec:
    """What a person would say about the model; searchable without any data."""

    name: str
    task: str  # one of TASKS
    classes: tuple[str, ...]
    domain: str
    language: str
    licence: str
    description: str

    def to_tags(self) -> dict[str, str]:
        d = {**asdict(self), "classes": json.dumps(list(self.classes))}
        return {f"{TAG}{k}": str(v) for k, v in d.items() if k != "name"}

    @staticmethod
    def from_tags(name: str, tags: dict[str, str]) -> SemanticSpec | None:
        if f"{TAG}task" not in tags:
            return None
        g = {k[len(TAG):]: v for k, v in tags.items() if k.startswith(TAG)}
        return SemanticSpec(name, g["task"], tuple(json.loads(g["classes"])), g.get("domain", ""),
                            g.get("language", ""), g.get("licence", ""), g.get("description", ""))


def task_of(texts: Sequence[str]) -> str:
    """``pair-classification`` when the texts are record pairs (crowdforge's pair convention)."""
    from crowdforge.modeling.pair_features import is_pair_task

    return TASKS[1] if is_pair_task(list(texts)) else TASKS[0]


def detect_language(texts: Sequence[str], seed: int = 0) -> str:
    """ISO code of the texts' main language (``unknown`` when undecidable), from a 200-text sample."""
    import langdetect

    langdetect.DetectorFactory.seed = seed
    sample = " ".join(str(t) for t in list(texts)[:200])
    try:
        return str(langdetect.detect(sample))
    except langdetect.LangDetectException:
        return "unknown"


def sample_texts(texts: Sequence[str], limit: int, seed: int) -> list[str]:
    """At most ``limit`` distinct texts, a seeded sample (the specification's cost is bounded)."""
    uniq = list(dict.fromkeys(str(t) for t in texts))
    if len(uniq) <= limit:
        return uniq
    idx = np.random.default_rng(seed).choice(len(uniq), size=limit, replace=False)
    return [uniq[i] for i in sorted(idx)]


HEAD_RECORD = "embedding_head.json"  # how often that head agrees with the ensemble on held-out texts
CROWDFORGE_SEMANTIC = "crowdforge_semantic.json"  # SemanticSpec, for crowdforge's own search of zips


def specify(texts: Sequence[str], classes: Sequence[str], name: str, cfg: Any, folder: Path,
            ensemble_dir: Path | None = None) -> SemanticSpec:
    """Write the specification of a model trained on ``texts`` to ``folder``; return the semantic one.

    ``cfg`` is :class:`crowdforge.config.MarketParams`. The folder gets the RKME and its calibration
    (:mod:`crowdforge.market.spec`), the learnware semantic JSON, and, given the model's
    ``ensemble_dir``, the embedding head a learnware market needs (its agreement with the ensemble on
    a held-out fifth of the texts goes to ``embedding_head.json``).
    """
    from crowdforge.market.features import embed
    from crowdforge.market.learnware_package import learnware_semantic_spec

    chosen = sample_texts(texts, cfg.spec_texts, cfg.seed)
    if len(chosen) < 4:
        raise ValueError(f"a specification needs at least 4 distinct training texts, got {len(chosen)}")
    language = detect_language(chosen, cfg.seed) if cfg.language == "auto" else cfg.language
    semantic = SemanticSpec(name, task_of(chosen), tuple(classes), cfg.domain, language, cfg.licence,
                            cfg.description or f"{name}: {', '.join(classes)} ({cfg.domain})")
    lw = learnware_semantic_spec(name=name, description=f"{semantic.description} [domain: {cfg.domain}]",
                                 classes=list(classes), domain=cfg.scenario, licence=semantic.licence,
                                 language=language if language != "unknown" else "und")
    x = embed(chosen)
    rkme, stat = make_spec(x, cfg.spec_points, cfg.seed)
    save_spec(folder, rkme, stat)
    (folder / SEMANTIC_FILE).write_text(json.dumps(lw, indent=2) + "\n", encoding="utf-8")
    (folder / CROWDFORGE_SEMANTIC).write_text(json.dumps(asdict(semantic), indent=2) + "\n", encoding="utf-8")
    if ensemble_dir is not None:
        write_embedding_head(folder, x, chosen, ensemble_dir, cfg.seed)
    return semantic


def write_embedding_head(folder: Path, x: np.ndarray, texts: Sequence[str], ensemble_dir: Path, seed: int) -> None:
    """Fit the ensemble's probabilities on embeddings (4/5 of the texts), record its agreement on the rest."""
    from safetensors.numpy import save_file

    from crowdforge.market.learnware_package import HEAD_FILE, fit_embedding_head
    from crowdforge.modeling.inference import load_ensemble

    probs = load_ensemble(ensemble_dir).predict_proba(list(texts))
    held = np.random.default_rng(seed).permutation(len(x))[: max(1, len(x) // 5)]
    fit = np.setdiff1d(np.arange(len(x)), held)
    weight, bias = fit_embedding_head(x[fit], probs[fit])
    agree = float(((x[held] @ weight.T + bias).argmax(1) == probs[held].argmax(1)).mean())
    save_file({"weight": weight, "bias": bias}, str(folder / HEAD_FILE))
    (folder / HEAD_RECORD).write_text(json.dumps({"held_out_texts": len(held), "agreement": agree}) + "\n")


@dataclass
class Entry:
    """One model on the market: where it is, what it says it is, and its specification."""

    source: str  # "registry" or the zip's path
    model: str
    version: str
    semantic: SemanticSpec
    rkme: Any
    stat: StatSpec
    run_id: str = ""  # the registered version's MLflow run: a cache key that a re-registered name cannot reuse

    @property
    def uri(self) -> str:
        return f"models:/{self.model}/{self.version}" if self.source == "registry" else self.source


def spec_folder(run_id: str, cache: Path) -> Path:
    """The ``spec/`` artifacts of an MLflow run on local disk (downloaded once into ``cache``)."""
    import shutil

    import mlflow

    folder = cache / run_id
    if not (folder / "spec.json").exists():
        tmp = cache / f".{run_id}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="spec", dst_path=str(tmp))
        shutil.rmtree(folder, ignore_errors=True)
        (tmp / "spec").rename(folder)
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def registry_entries(client: Any, cache: Path) -> tuple[list[Entry], list[str]]:
    """Every registered version of every model with a specification (and the ``models:/`` URIs of
    those without one)."""
    found, missing = [], []
    for rm in client.search_registered_models():
        for mv in client.search_model_versions(f"name = '{rm.name}'"):
            semantic = SemanticSpec.from_tags(rm.name, mv.tags)
            if semantic is None:
                missing.append(f"models:/{rm.name}/{mv.version}")
                continue
            rkme, stat = load_spec(spec_folder(mv.run_id, cache))
            found.append(Entry("registry", rm.name, str(mv.version), semantic, rkme, stat, mv.run_id))
    return found, missing


def iter_zip_entries(folder: Path) -> Iterator[Entry]:
    """Learnware zips written by ``crowdforge market export`` in ``folder``."""
    from crowdforge.market.export import read_zip_entry

    for path in sorted(folder.glob("*.zip")):
        yield read_zip_entry(path)
