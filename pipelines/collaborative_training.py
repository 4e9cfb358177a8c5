"""The Prefect flow ``collaborative_training``: every agent as a task, then the promotion gate.

Tasks pass paths and small report dicts, never DataFrames or models. A stage is skipped (Prefect
``Cached`` state) when the fingerprint of its deps, code and params — the same ones ``dvc.yaml``
declares, from :mod:`crowdforge.stages` — matches an earlier run and its outputs still exist.
Ensemble members are submitted to the task runner so they can train concurrently.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.context import TaskRunContext
from prefect.task_runners import ThreadPoolTaskRunner

from crowdforge.config import Params, load_params
from crowdforge.paths import Paths
from crowdforge.runtime import configure_environment, set_torch_threads
from crowdforge.stages import STAGES, Stage, fingerprint

configure_environment()


def _context(inputs: dict[str, Any]) -> tuple[Params, Paths]:
    return load_params(inputs["params_file"], inputs.get("overrides")), Paths(Path(inputs["root"]))


def stage_cache_key(ctx: TaskRunContext, inputs: dict[str, Any]) -> str | None:
    """Reuse a stage's result only when its deps, code and params are unchanged and outs exist."""
    if inputs.get("force"):
        return None
    params, paths = _context(inputs)
    stage: Stage = STAGES[inputs["name"]]
    member = inputs.get("member")
    if member:
        stage = Stage(stage.name, stage.deps, stage.code, stage.params,
                      outs=(f"models/members/{member}",))
    key = fingerprint(stage, params, paths.root, extra={"member": member})
    return None if key is None else f"{stage.name}-{member or ''}-{key}"


def _publish(stage: str, report: dict[str, Any]) -> None:
    md = report.get("summary_md")
    if md:
        create_markdown_artifact(markdown=md, key=f"crowdforge-{stage}", description=f"{stage} report")


@task(cache_key_fn=stage_cache_key, persist_result=True, task_run_name="{name}")
def run_stage(name: str, params_file: str, root: str, overrides: dict[str, Any] | None,
              force: bool = False, upstream: Any = None) -> dict[str, Any]:
    """Run one agent in-process; ``upstream`` only orders the call after its inputs exist."""
    import importlib

    params, paths = _context({"params_file": params_file, "root": root, "overrides": overrides})
    if name in ("pretrain", "finetune", "ensemble"):
        set_torch_threads(params.runtime.torch_threads)
    report = importlib.import_module(f"crowdforge.agents.{name}").run(params, paths)
    _publish(name, report)
    return _brief(report)


@task(cache_key_fn=stage_cache_key, persist_result=True, task_run_name="finetune-{member}")
def train_member(name: str, member: str, params_file: str, root: str,
                 overrides: dict[str, Any] | None, force: bool = False, upstream: Any = None,
                 threads: int = 0) -> dict[str, Any]:
    from crowdforge.agents import finetune

    params, paths = _context({"params_file": params_file, "root": root, "overrides": overrides})
    set_torch_threads(threads)
    return finetune.train_member(params, paths, member)


@task(task_run_name="finetune-report")
def finetune_report(params_file: str, root: str, overrides: dict[str, Any] | None,
                    results: list[dict[str, Any]]) -> dict[str, Any]:
    from crowdforge.agents import finetune

    params, paths = _context({"params_file": params_file, "root": root, "overrides": overrides})
    report = finetune.write_report(params, paths, results)
    _publish("finetune", report)
    return _brief(report)


@task(retries=2, retry_delay_seconds=3, task_run_name="register")
def register(params_file: str, root: str, overrides: dict[str, Any] | None, upstream: Any = None,
             flow_run_id: str | None = None) -> dict[str, Any]:
    """Not cached: registration is idempotent itself (same ensemble, same version)."""
    from crowdforge.agents import register as agent

    params, paths = _context({"params_file": params_file, "root": root, "overrides": overrides})
    report = agent.run(params, paths, flow_run_id=flow_run_id)
    _publish("register", report)
    return _brief(report)


@task(retries=2, retry_delay_seconds=3, task_run_name="promote")
def promote(params_file: str, root: str, overrides: dict[str, Any] | None, upstream: Any = None) -> dict[str, Any]:
    from crowdforge.registry.promote import promote as gate

    params, paths = _context({"params_file": params_file, "root": root, "overrides": overrides})
    report = gate(params, paths)
    _publish("promote", report)
    return _brief(report)


def _brief(report: dict[str, Any]) -> dict[str, Any]:
    """The scalar metrics of a report (what the summary prints and Prefect persists)."""
    return {k: v for k, v in report.items() if isinstance(v, (int, float, str, bool)) and k != "summary_md"}


@flow(name="collaborative_training", log_prints=True)
def collaborative_training(params_file: str = "params.yaml", root: str = ".",
                           overrides: dict[str, Any] | None = None, force: bool = False) -> dict[str, Any]:
    """ingest → validate → reputation → augment → pretrain → finetune (members) → ensemble → register → promote."""
    from prefect.runtime import flow_run

    logger = get_run_logger()
    root = str(Path(root).resolve())
    params = load_params(params_file, overrides)
    common = {"params_file": params_file, "root": root, "overrides": overrides}
    timeline: list[dict[str, Any]] = []

    def timed(label: str, fn, *args: Any, **kwargs: Any) -> dict[str, Any]:
        t0 = time.perf_counter()
        state = fn(*args, return_state=True, **kwargs)
        result = state.result()
        timeline.append({"stage": label, "seconds": round(time.perf_counter() - t0, 2),
                         "cached": state.name == "Cached", "metrics": result})
        logger.info("%s: %s in %.1fs", label, state.name, timeline[-1]["seconds"])
        return result

    prev: Any = None
    for name in ("ingest", "validate", "reputation", "augment", "pretrain"):
        prev = timed(name, run_stage, name, force=force, upstream=prev, **common)

    t0 = time.perf_counter()
    workers = max(1, params.runtime.max_workers)
    threads = params.runtime.torch_threads or 0
    if workers > 1 and threads == 0:
        import os

        threads = max(1, (os.cpu_count() or 1) // workers)
    futures = [train_member.submit("finetune", m.name, force=force, upstream=prev, threads=threads,
                                   **common)
               for m in params.finetune.members]
    members = []
    for m, future in zip(params.finetune.members, futures):
        future.wait()
        members.append(future.state.result())
        timeline.append({"stage": f"finetune:{m.name}", "seconds": members[-1].get("seconds"),
                         "cached": future.state.name == "Cached", "metrics": members[-1]})
    prev = finetune_report(results=members, **common)
    timeline.append({"stage": "finetune", "seconds": round(time.perf_counter() - t0, 2),
                     "cached": all(t["cached"] for t in timeline if t["stage"].startswith("finetune:")),
                     "metrics": prev})

    prev = timed("ensemble", run_stage, "ensemble", force=force, upstream=prev, **common)
    prev = timed("register", register, upstream=prev, flow_run_id=str(flow_run.id), **common)
    decision = timed("promote", promote, upstream=prev, **common)
    return {"stages": timeline, "model": prev, "promotion": decision, "flow_run_id": str(flow_run.id)}


def build_flow(params: Params):
    """The flow with the task runner ``params.runtime`` asks for."""
    workers = max(1, params.runtime.max_workers)
    if params.runtime.task_runner == "threads":
        runner = ThreadPoolTaskRunner(max_workers=workers)
    elif params.runtime.task_runner == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as exc:  # pragma: no cover - optional engine
            raise RuntimeError("runtime.task_runner=dask needs `pip install prefect-dask`") from exc
        runner = DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1})
    else:
        raise ValueError(f"runtime.task_runner must be threads or dask, got {params.runtime.task_runner!r}")
    return collaborative_training.with_options(task_runner=runner)
