"""Each stage's deps, outs and params, declared once for both drivers.

``dvc.yaml`` is generated from :data:`STAGES` (``crowdforge dvc-yaml``; a test keeps the committed
file in sync) and the Prefect flow fingerprints the same deps to decide whether a stage can be
skipped, so the two drivers agree on what "changed" means.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crowdforge.config import Params

PKG = "src/crowdforge"


@dataclass(frozen=True)
class Stage:
    name: str
    deps: tuple[str, ...]
    code: tuple[str, ...]
    params: tuple[str, ...]
    outs: tuple[str, ...]
    persist: tuple[str, ...] = ()  # outs kept between runs and read back as history (DVC `persist`)


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage(
            "ingest",
            deps=("data/raw",),
            code=(f"{PKG}/agents/ingest.py", f"{PKG}/ingestion", f"{PKG}/safety.py"),
            params=("data", "ingest"),
            outs=("data/interim/submissions.parquet", "data/interim/unlabeled.parquet",
                  "data/interim/gold.parquet", "reports/ingest.json"),
        ),
        Stage(
            "validate",
            deps=("data/interim/submissions.parquet",),
            code=(f"{PKG}/agents/validate.py", f"{PKG}/ingestion", f"{PKG}/safety.py", f"{PKG}/gold.py"),
            params=("data", "validate"),
            outs=("data/interim/accepted.parquet", "data/quarantine", "reports/validate.json",
                  "reports/data_docs"),
        ),
        Stage(
            "reputation",
            deps=("data/interim/accepted.parquet", "data/interim/gold.parquet", "reports/validate.json"),
            code=(f"{PKG}/agents/reputation.py", f"{PKG}/truth", f"{PKG}/gold.py"),
            params=("data", "reputation"),
            outs=("data/processed/labels.parquet", "reports/reputation.json"),
            persist=("data/reputation/ledger.parquet",),
        ),
        Stage(
            "augment",
            deps=("data/processed/labels.parquet", "data/interim/gold.parquet"),
            code=(f"{PKG}/agents/augment.py", f"{PKG}/modeling/tokens.py"),
            params=("data", "augment"),
            outs=("data/processed/train_augmented.parquet", "data/processed/valid.parquet",
                  "reports/augment.json"),
        ),
        Stage(
            "pretrain",
            deps=("data/interim/unlabeled.parquet", "data/interim/accepted.parquet",
                  "data/interim/gold.parquet"),
            code=(f"{PKG}/agents/pretrain.py", f"{PKG}/modeling", f"{PKG}/gold.py"),
            params=("pretrain",),
            outs=("models/pretrained", "reports/pretrain.json"),
        ),
        Stage(
            "finetune",
            deps=("data/processed/train_augmented.parquet", "data/processed/valid.parquet",
                  "models/pretrained", "data/interim/accepted.parquet"),
            code=(f"{PKG}/agents/finetune.py", f"{PKG}/modeling", f"{PKG}/metrics.py"),
            params=("data", "finetune"),
            outs=("models/members", "reports/finetune.json"),
        ),
        Stage(
            "federated",
            deps=("models/pretrained", "data/processed/valid.parquet"),
            code=(f"{PKG}/agents/federated.py", f"{PKG}/federated", f"{PKG}/modeling"),
            params=("data", "federated"),
            outs=("models/federated", "reports/federated.json"),
            persist=("data/reputation/sites.parquet",),
        ),
        Stage(
            "ensemble",
            deps=("models/members", "models/federated", "data/processed/valid.parquet", "data/interim/gold.parquet",
                  "data/processed/train_augmented.parquet", "data/interim/unlabeled.parquet"),
            code=(f"{PKG}/agents/ensemble.py", f"{PKG}/modeling", f"{PKG}/metrics.py", f"{PKG}/gold.py"),
            params=("data", "finetune", "federated", "ensemble"),
            outs=("models/ensemble", "reports/test_predictions.parquet", "reports/ensemble.json"),
        ),
        Stage(
            "register",
            deps=("models/ensemble", "reports/ingest.json", "reports/validate.json",
                  "reports/reputation.json", "reports/augment.json", "reports/pretrain.json",
                  "reports/finetune.json", "reports/federated.json", "reports/ensemble.json",
                  "reports/test_predictions.parquet",
                  "data/reputation/ledger.parquet",
                  "data/processed/labels.parquet", "data/interim/gold.parquet"),
            code=(f"{PKG}/agents/register.py", f"{PKG}/registry", f"{PKG}/reporting", f"{PKG}/metrics.py",
                  f"{PKG}/market"),
            params=("register", "market"),
            outs=("reports/register.json", "reports/run_report.html"),
        ),
        Stage(
            "promote",
            deps=("reports/register.json", "data/interim/gold.parquet"),
            code=(f"{PKG}/registry", f"{PKG}/metrics.py", f"{PKG}/gold.py"),
            params=("register", "promote"),
            outs=("reports/promote.json",),
        ),
    )
}

# the order of STAGES is the pipeline's order, everywhere (flow, reports, tests)
AGENTS = tuple(name for name in STAGES if name != "promote")  # stages with an agent module (promote is the gate)
BUILD_STAGES = AGENTS[: AGENTS.index("register")]  # the stages that build and evaluate the model


def _hash_path(h: hashlib._Hash, root: Path, rel: str) -> None:
    """Feed a file or a directory tree (sorted, hidden/temporary entries skipped) into ``h``."""
    path = root / rel
    h.update(rel.encode())
    if path.is_file():
        h.update(b"F")
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    elif path.is_dir():
        h.update(b"D")
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
            for name in sorted(filenames):
                if name.startswith(".") or name.endswith(".pyc"):
                    continue
                _hash_path(h, root, str(Path(dirpath, name).relative_to(root)))
    else:
        h.update(b"-")


def outputs_exist(stage: Stage, root: Path) -> bool:
    return all((root / out).exists() for out in stage.outs)


def fingerprint(stage: Stage, params: Params, root: Path, extra: dict[str, Any] | None = None) -> str:
    """Hash of a stage's deps, code and params (what decides whether its outputs are stale)."""
    h = hashlib.sha256()
    h.update(json.dumps({"stage": stage.name, "root": str(root.resolve()),
                         "params": {s: params.section(s) for s in stage.params},
                         "extra": extra or {}}, sort_keys=True, default=str).encode())
    for rel in (*stage.deps, *stage.code):
        _hash_path(h, root, rel)
    return h.hexdigest()


def _record(root: Path, name: str) -> Path:
    return root / ".crowdforge" / "stages" / f"{name}.json"


def record_run(stage: Stage, root: Path, inputs_fingerprint: str) -> None:
    """Note that ``stage`` ran on inputs with this fingerprint (taken before it ran). Both drivers
    write it (the flow's tasks, and ``crowdforge stage``, which ``dvc repro`` calls), so each reuses
    what the other produced."""
    from crowdforge import io

    io.write_json(_record(root, stage.name), {"fingerprint": inputs_fingerprint})


def up_to_date(stage: Stage, params: Params, root: Path) -> bool:
    """Whether the stage's outputs exist and its last run (by either driver) had today's deps, code and params."""
    from crowdforge import io

    file = _record(root, stage.name)
    if not (outputs_exist(stage, root) and file.exists()):
        return False
    return io.read_json(file).get("fingerprint") == fingerprint(stage, params, root)


def _is_metrics(out: str) -> bool:
    """Stage reports are DVC metrics, so `dvc exp show` / `dvc metrics diff` list their numbers."""
    return out.startswith("reports/") and out.endswith(".json")


def dvc_yaml() -> dict[str, Any]:
    """The ``dvc.yaml`` content: every stage runs ``crowdforge stage NAME``."""
    stages: dict[str, Any] = {}
    for s in STAGES.values():
        outs: list[Any] = [o for o in s.outs if not _is_metrics(o)]
        outs += [{p: {"persist": True}} for p in s.persist]
        entry: dict[str, Any] = {
            "cmd": f"crowdforge stage {s.name}",
            "deps": [*s.code, *s.deps],
            "params": list(s.params),
            "outs": outs,
        }
        metrics = [o for o in s.outs if _is_metrics(o)]
        if metrics:
            entry["metrics"] = metrics
        stages[s.name] = entry
    return {"stages": stages}
