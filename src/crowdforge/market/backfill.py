"""``crowdforge market specify``: a specification for a version registered without one.

Versions registered before specifications existed, or with ``market.spec: false``, are invisible to
search. Their owner still has the training texts (the run's ``data/processed/labels.parquet``, or any
faithful sample of them), so the same specification ``register`` would have made is computed from
those texts and attached to the existing version: ``spec/`` artifacts on its MLflow run and the
``market.*`` version tags. Nothing else about the version changes.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from typing import Any


def specify_version(params: Any, paths: Any, version_ref: str, texts: Sequence[str],
                    model: str | None = None) -> dict[str, str]:
    """Attach a specification of ``texts`` to version ``version_ref`` (a number or an alias) of ``model``
    (default ``register.model_name``); returns its ``market.*`` tags. ValueError when the version has one."""
    from mlflow import MlflowClient

    from crowdforge.market.catalog import Entry, SemanticSpec, specify
    from crowdforge.market.reuse import ensemble_dir
    from crowdforge.modeling.inference import load_ensemble
    from crowdforge.registry.tracking import connect
    from crowdforge.registry.versions import resolve_version

    connect(params, paths)
    client = MlflowClient()
    name = model or params.register.model_name
    mv = resolve_version(client, name, version_ref)
    if SemanticSpec.from_tags(name, mv.tags) is not None:
        raise ValueError(f"{name} version {mv.version} already has a specification")
    cache = paths.cache / "market"
    ens_dir = ensemble_dir(Entry("registry", name, str(mv.version), None, None, None, mv.run_id), cache)
    classes = list(load_ensemble(ens_dir).classes)
    staging = cache / f"spec-staging-{mv.version}"
    shutil.rmtree(staging, ignore_errors=True)
    semantic = specify(list(texts), classes, name, params.market, staging, ens_dir)
    client.log_artifacts(mv.run_id, str(staging), artifact_path="spec")
    tags = semantic.to_tags()
    for key, value in tags.items():
        client.set_model_version_tag(name, str(mv.version), key, value)
    shutil.rmtree(staging, ignore_errors=True)
    return tags
