"""register: log the run to MLflow with full lineage, register the ensemble, alias it ``challenger``.

With ``market.spec`` (default) the new version also carries a learnware specification: an RKME of
the crowd items' texts in the market's shared feature space as run artifacts under ``spec/``, and
the semantic specification as ``market.*`` version tags (:mod:`crowdforge.market`).

Idempotent: an ensemble whose files hash to an already registered version is not registered
again; that version just receives the ``challenger`` alias.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from crowdforge import io
from crowdforge.config import Params
from crowdforge.paths import Paths
from crowdforge.reports import write_report
from crowdforge.stages import BUILD_STAGES

REPORT_STAGES = BUILD_STAGES
DATA_PATHS = ["data/raw", "data/interim/accepted.parquet", "data/processed/labels.parquet",
              "data/processed/train_augmented.parquet", "data/reputation/ledger.parquet"]


def lineage_summary(reports: dict[str, dict[str, Any]]) -> dict[str, str]:
    """One-line validation result and reputation summary, and the federated member's provenance, for the
    version's tags."""
    v, r, f = reports.get("validate", {}), reports.get("reputation", {}), reports.get("federated", {})
    out = {}
    if f.get("enabled"):  # the sites' names, rounds, protections and the aggregate's hash; never a site's data
        out.update({"federated.sites": ",".join(f["sites"]), "federated.rounds": str(f["rounds"]),
                    "federated.rounds_applied": str(f["rounds_applied"]), "federated.strategy": f["strategy"],
                    "federated.secagg": str(bool(f["secagg"])).lower(),
                    "federated.epsilon": "none (no DP)" if f.get("epsilon") is None else f"{f['epsilon']:.3f}",
                    "federated.delta": str(f["delta"]) if f.get("epsilon") is not None else "none",
                    "federated.aggregate_sha256": f["aggregate_sha256"]})
    if v:
        out["validation"] = (f"{v.get('rows_in')} in = {v.get('rows_accepted')} accepted + "
                             f"{v.get('rows_quarantined')} quarantined")
    if r:
        least = ", ".join(str(c.get("contributor_id")) for c in r.get("least_trusted", [])[:5])
        out["reputation"] = (f"{r.get('n_contributors')} contributors, {r.get('n_labels')} labels; gold check "
                             f"accuracy {r.get('gold_check_accuracy')}; least trusted: {least}")
    return out


def flatten_params(params: Params) -> dict[str, str]:
    out: dict[str, str] = {}
    for section, values in params.to_dict().items():
        for key, value in values.items():
            out[f"{section}.{key}"] = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
    return out


def report_metrics(reports: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Every numeric scalar of every report, as ``<stage>.<key>``."""
    return {f"{stage}.{k}": float(v) for stage, rep in reports.items() for k, v in rep.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _signature(classes: list[str]):
    from mlflow.models import infer_signature

    out = pd.DataFrame({"label": [classes[0]], "confidence": [1.0], **{f"prob_{c}": [0.0] for c in classes}})
    return infer_signature(pd.DataFrame({"text": ["an example"]}), out)


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}"
            for pkg in ("mlflow", "torch", "transformers", "pandas", "numpy", "scikit-learn", "skops")]


def log_pyfunc(ensemble_dir: Path, classes: list[str], name: str) -> Any:
    """Log a crowdforge ensemble folder as the active run's pyfunc model and register it as ``name``."""
    import mlflow

    return mlflow.pyfunc.log_model(
        name="model",
        python_model=str(Path(__file__).resolve().parents[1] / "registry" / "pyfunc_model.py"),
        artifacts={"ensemble": str(ensemble_dir)},
        code_paths=[str(Path(__file__).resolve().parents[1])],
        signature=_signature(classes),
        input_example=pd.DataFrame({"text": ["an example text"]}),
        pip_requirements=_requirements(),
        registered_model_name=name,
    )


def find_version_by_tag(client: Any, model_name: str, key: str, value: str) -> Any | None:
    for mv in client.search_model_versions(f"name = '{model_name}'"):
        if mv.tags.get(key) == value:
            return mv
    return None


def _specification(params: Params, paths: Paths, name: str, classes: list[str]) -> tuple[Path | None, Any]:
    """The new version's specification folder (statistical + learnware semantic files) and its semantic
    spec, from the crowd items' texts; ``(None, None)`` with ``market.spec`` off."""
    import shutil

    from crowdforge.market.catalog import specify

    if not params.market.spec:
        return None, None
    folder = paths.cache / "market" / "spec-staging"
    shutil.rmtree(folder, ignore_errors=True)
    texts = pd.read_parquet(paths.labels, columns=["text"])["text"].astype(str).tolist()
    return folder, specify(texts, classes, name, params.market, folder, paths.ensemble)


def run(params: Params, paths: Paths, flow_run_id: str | None = None) -> dict[str, Any]:
    import mlflow
    from mlflow import MlflowClient

    from crowdforge.registry.lineage import data_versions, git_state, md5_path, raw_dvc_md5
    from crowdforge.registry.tracking import connect
    from crowdforge.reporting import build_report

    report_html = build_report(paths, params)  # rebuilt even when the version is reused; logged with reports/
    experiment_id = connect(params, paths)
    client = MlflowClient()
    name = params.register.model_name
    reports = {s: io.read_json(paths.report(s)) for s in REPORT_STAGES if paths.report(s).exists()}
    ensemble_report = reports.get("ensemble", {})
    ensemble_md5 = md5_path(paths.ensemble)
    flow_run_id = flow_run_id or os.environ.get("PREFECT__FLOW_RUN_ID", "")

    existing = None
    try:
        client.get_registered_model(name)
        existing = find_version_by_tag(client, name, "ensemble_md5", ensemble_md5)
    except mlflow.exceptions.MlflowException:
        pass

    semantic = None  # the new version's semantic specification (none for a reused version)
    if existing is not None:
        version, run_id, new = existing.version, existing.run_id, False
    else:
        versions = data_versions(paths.root, DATA_PATHS)
        lineage = {**git_state(paths.root), "prefect_flow_run_id": flow_run_id or "none",
                   "ensemble_md5": ensemble_md5, **lineage_summary(reports),
                   "data.raw.dvc": raw_dvc_md5(paths.root),
                   "data.raw.md5": versions.get("data/raw", {}).get("md5", ""),
                   "data.labels.md5": versions.get("data/processed/labels.parquet", {}).get("md5", "")}
        classes = list(params.data.classes)
        spec_dir, semantic = _specification(params, paths, name, classes)
        with mlflow.start_run(experiment_id=experiment_id, run_name="collaborative_training") as active:
            mlflow.set_tags({**lineage, **{f"data.{k}": v["md5"] for k, v in versions.items()}})
            mlflow.log_params(flatten_params(params))
            mlflow.log_metrics(report_metrics(reports))
            mlflow.log_dict({"tags": lineage, "data_versions": versions, "params": params.to_dict()},
                            "lineage/lineage.json")
            mlflow.log_text(yaml.safe_dump(params.to_dict(), sort_keys=False), "lineage/params.yaml")
            for extra in (paths.root / "data" / "raw.dvc", paths.root / "dvc.lock"):
                if extra.exists():
                    mlflow.log_artifact(str(extra), artifact_path="lineage")
            mlflow.log_artifacts(str(paths.reports), artifact_path="reports")
            if spec_dir is not None:
                mlflow.log_artifacts(str(spec_dir), artifact_path="spec")
            info = log_pyfunc(paths.ensemble, classes, name)
            run_id = active.info.run_id
        version = str(info.registered_model_version)
        new = True
        tags = {**lineage, "test_set_hash": str(ensemble_report.get("test_set_hash", "")),
                "test_accuracy": str(ensemble_report.get("test_accuracy", "")),
                "test_macro_f1": str(ensemble_report.get("test_macro_f1", "")),
                "run_id": run_id, **(semantic.to_tags() if semantic is not None else {})}
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, "challenger", version)

    metrics = {"model_name": name, "version": int(version), "new_version": new, "run_id": run_id,
               "experiment_id": experiment_id,
               "model_uri": f"models:/{name}/{version}",
               "test_accuracy": ensemble_report.get("test_accuracy"),
               "run_report": str(report_html.relative_to(paths.root)),
               "specification": semantic.to_tags() if semantic is not None else None}
    verb = "registered new" if new else "reused already registered"
    md = (f"## register\n\n{verb} version **{version}** of `{name}` (alias `challenger`), "
          f"MLflow run `{run_id}`, ensemble md5 `{ensemble_md5}`.\n")
    if semantic is not None:
        md += (f"\nSpecification (learnware): {semantic.task}, classes {', '.join(semantic.classes)}, domain "
               f"`{semantic.domain}`, language `{semantic.language}`; `crowdforge market search --texts FILE` "
               "finds it.\n")
    return write_report(paths, "register", metrics, md)
