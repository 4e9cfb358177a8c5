"""Finding a registered version and its files: one place for every command that names a version."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def resolve_version(client: Any, name: str, ref: str) -> Any:
    """A version of ``name`` by number (``3``) or alias (``champion``); ValueError naming both if absent."""
    from mlflow.exceptions import MlflowException

    try:
        if str(ref).isdigit():
            return client.get_model_version(name, str(ref))
        return client.get_model_version_by_alias(name, ref)
    except MlflowException as exc:
        raise ValueError(f"no version {ref!r} of model {name!r}: {exc.message}") from None


def download_ensemble(client: Any, name: str, version: str, dst: Path) -> Path:
    """Download the crowdforge ensemble folder a version's pyfunc carries (its ``ensemble`` artifact,
    located through the MLmodel file) into ``dst``; returns the folder."""
    import mlflow
    from mlflow.models import Model

    flavor = Model.load(f"models:/{name}/{version}").flavors["python_function"]
    rel = flavor["artifacts"]["ensemble"]["path"]
    root = client.get_model_version_download_uri(name, version).rstrip("/")
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{root}/{rel}", dst_path=str(dst)))
