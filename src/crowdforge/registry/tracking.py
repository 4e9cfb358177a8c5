"""Connect to MLflow the same way from every entry point (CLI, flow, tests, serving)."""

from __future__ import annotations

from pathlib import Path

from crowdforge.config import Params
from crowdforge.paths import Paths


def resolve_tracking_uri(uri: str, root: Path) -> str:
    """``sqlite:///mlflow.db`` is relative to the project root, not to the caller's cwd."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str((root / uri[len(prefix):]).resolve())
    return uri


def connect(params: Params, paths: Paths) -> str:
    """Point MLflow at the configured store; returns the experiment id (created with a local artifact folder)."""
    import mlflow

    uri = resolve_tracking_uri(params.register.tracking_uri, paths.root)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    exp = mlflow.get_experiment_by_name(params.register.experiment)
    if exp is not None:
        return exp.experiment_id
    location = (paths.root / "mlartifacts").resolve().as_uri() if uri.startswith("sqlite:") else None
    return mlflow.create_experiment(params.register.experiment, artifact_location=location)


def champion_uri(params: Params, alias: str = "champion") -> str:
    return f"models:/{params.register.model_name}@{alias}"
