"""``crowdforge lineage VERSION``: a registered version's provenance and how to restore it."""

from __future__ import annotations

from crowdforge.config import Params
from crowdforge.paths import Paths

SHOWN = ("git_commit", "git_dirty", "prefect_flow_run_id", "data.raw.dvc", "data.raw.md5", "data.labels.md5",
         "ensemble_md5", "test_set_hash", "test_accuracy", "test_macro_f1", "validation", "reputation",
         "federated.sites", "federated.rounds", "federated.secagg", "federated.epsilon", "federated.delta",
         "federated.aggregate_sha256", "promotion.decision", "promotion.reason", "promotion.at")


class LineageError(RuntimeError):
    pass


def describe(params: Params, paths: Paths, version: str) -> str:
    from mlflow import MlflowClient

    from crowdforge.registry.lineage import restore_commands
    from crowdforge.registry.tracking import connect
    from crowdforge.registry.versions import resolve_version

    connect(params, paths)
    client = MlflowClient()
    name = params.register.model_name
    try:
        mv = resolve_version(client, name, version)
    except ValueError as exc:
        raise LineageError(str(exc)) from None
    aliases = ", ".join(mv.aliases) or "none"
    lines = [f"{name} version {mv.version} (aliases: {aliases}), MLflow run {mv.run_id}", ""]
    width = max(len(k) for k in SHOWN)
    for key in SHOWN:
        if mv.tags.get(key):
            lines.append(f"  {key:<{width}}  {mv.tags[key]}")
    run = client.get_run(mv.run_id)
    params_logged = {k: v for k, v in run.data.params.items()}
    lines += ["", f"  params: {len(params_logged)} logged on the run (also lineage/params.yaml)", "",
              "Restore this version's code and data:"]
    lines += [f"  {cmd}" for cmd in restore_commands(mv.tags, mv.run_id)]
    return "\n".join(lines)
