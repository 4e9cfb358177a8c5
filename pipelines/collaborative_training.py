"""The Prefect flow ``collaborative_training``: every agent as a task, then the promotion gate.

Tasks pass paths and small report dicts, never DataFrames or models. A stage is reused (Prefect
``Cached`` state) when the fingerprint of its deps, code and params — the ones ``dvc.yaml``
declares, from :mod:`crowdforge.stages` — matches an earlier run; when its outputs were deleted,
or ``force`` is set, it runs again and refreshes the cache. Ensemble members are submitted to the
task runner so they can train concurrently.
"""

from __future__ import annotations

import importlib
import os
import time
from pathlib import Path
from typing import Any

from prefect import Task, flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.context import TaskRunContext
from prefect.task_runners import ThreadPoolTaskRunner

from crowdforge import progress
from crowdforge.config import Params, load_params
from crowdforge.paths import Paths
from crowdforge.run_lock import run_lock
from crowdforge.runtime import configure_environment, set_torch_threads
from crowdforge.stages import BUILD_STAGES, STAGES, Stage, fingerprint, outputs_exist, record_run, up_to_date

configure_environment()


def _context(params_file: str, root: str, overrides: dict[str, Any] | None) -> tuple[Params, Paths]:
    return load_params(params_file, overrides), Paths(Path(root))


def _stage(name: str, member: str | None = None) -> Stage:
    stage = STAGES[name]
    if member is None:
        return stage
    return Stage(stage.name, stage.deps, stage.code, stage.params, outs=(f"models/members/{member}",))


def stage_cache_key(ctx: TaskRunContext, inputs: dict[str, Any]) -> str:
    """Reuse a stage's result exactly when its deps, code and params are unchanged."""
    params, paths = _context(inputs["params_file"], inputs["root"], inputs.get("overrides"))
    member = inputs.get("member")
    key = fingerprint(_stage(inputs["name"], member), params, paths.root, extra={"member": member})
    return f"{inputs['name']}-{member or 'all'}-{key}"


def _prefect_progress(key: str, every: float = 2.0) -> Any:
    """A :mod:`crowdforge.progress` sink that mirrors the agent's progress into a Prefect progress
    artifact (the UI's view of where a run is), updated at most every ``every`` seconds."""
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    state: dict[str, Any] = {"id": None, "at": 0.0}

    def send(description: str, done: int, total: int) -> None:
        now = time.monotonic()
        if state["id"] is not None and done < total and now - state["at"] < every:
            return
        state["at"] = now
        pct = 100.0 * done / max(total, 1)
        try:
            if state["id"] is None:
                state["id"] = create_progress_artifact(pct, key=key, description=description)
            else:
                update_progress_artifact(state["id"], pct, description=description)
        except Exception as exc:  # noqa: BLE001 -- progress must never fail a stage
            get_run_logger().debug("progress artifact %s not updated: %s", key, exc)

    return send


def _publish(stage: str, report: dict[str, Any]) -> None:
    if report.get("summary_md"):
        create_markdown_artifact(markdown=report["summary_md"], key=f"crowdforge-{stage}",
                                 description=f"{stage} report")


def _brief(report: dict[str, Any]) -> dict[str, Any]:
    """The scalar metrics of a report (what the summary prints and Prefect persists)."""
    return {k: v for k, v in report.items() if isinstance(v, (int, float, str, bool)) and k != "summary_md"}


@task(cache_key_fn=stage_cache_key, persist_result=True, task_run_name="{name}")
def run_stage(name: str, params_file: str, root: str, overrides: dict[str, Any] | None,
              upstream: Any = None) -> dict[str, Any]:
    """Run one agent in-process; ``upstream`` only orders the call after its inputs exist."""
    params, paths = _context(params_file, root, overrides)
    if name in ("pretrain", "ensemble"):
        set_torch_threads(params.runtime.torch_threads)
    inputs = fingerprint(STAGES[name], params, paths.root)
    with progress.sink(_prefect_progress(f"crowdforge-progress-{name}")):
        report = importlib.import_module(f"crowdforge.agents.{name}").run(params, paths)
    record_run(STAGES[name], paths.root, inputs)
    _publish(name, report)
    return _brief(report)


@task(cache_key_fn=stage_cache_key, persist_result=True, task_run_name="finetune-{member}")
def train_member(name: str, member: str, params_file: str, root: str,
                 overrides: dict[str, Any] | None, upstream: Any = None, threads: int = 0) -> dict[str, Any]:
    from crowdforge.agents import finetune

    params, paths = _context(params_file, root, overrides)
    key = "crowdforge-progress-" + "".join(c if c.isalnum() else "-" for c in member.lower())
    with progress.sink(_prefect_progress(key)):
        return finetune.train_member(params, paths, member, threads=threads)


@task(task_run_name="finetune-report")
def finetune_report(params_file: str, root: str, overrides: dict[str, Any] | None,
                    results: list[dict[str, Any]]) -> dict[str, Any]:
    from crowdforge.agents import finetune

    params, paths = _context(params_file, root, overrides)
    report = finetune.write_report(params, paths, results)
    _publish("finetune", report)
    return _brief(report)


@task(retries=2, retry_delay_seconds=3, task_run_name="register")
def register(params_file: str, root: str, overrides: dict[str, Any] | None, upstream: Any = None,
             flow_run_id: str | None = None) -> dict[str, Any]:
    """Not cached: registration is idempotent itself (the same ensemble keeps its version)."""
    from crowdforge.agents import register as agent

    params, paths = _context(params_file, root, overrides)
    report = agent.run(params, paths, flow_run_id=flow_run_id)
    _publish("register", report)
    from prefect.artifacts import create_link_artifact

    from crowdforge.registry.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(params.register.tracking_uri, paths.root)
    link = (f"{uri}/#/experiments/{report['experiment_id']}/runs/{report['run_id']}/artifacts/reports/run_report.html"
            if uri.startswith("http") else (paths.root / report["run_report"]).as_uri())
    create_link_artifact(key="crowdforge-run-report", link=link, link_text="run report (plots)",
                         description="contributor reliability, confusion vs gold, confidence, members, calibration")
    return _brief(report)


@task(retries=2, retry_delay_seconds=3, task_run_name="promote")
def promote(params_file: str, root: str, overrides: dict[str, Any] | None, upstream: Any = None) -> dict[str, Any]:
    from crowdforge.registry.promote import promote as gate

    params, paths = _context(params_file, root, overrides)
    report = gate(params, paths)
    _publish("promote", report)
    return _brief(report)


def _dvc(root: Path) -> Any:
    """A runner of ``dvc`` commands in ``root``, or ``None`` when ``root`` is not a DVC repository."""
    import shutil
    import subprocess
    import sys

    dvc = shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))
    if not (root / ".dvc").is_dir() or not Path(dvc).exists():
        return None

    def run(*args: str) -> str:
        proc = subprocess.run([dvc, *args], check=False, cwd=root, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"dvc {' '.join(args)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc.stdout.strip()

    return run


@task(retries=1, retry_delay_seconds=5, task_run_name="version-raw-data")
def version_raw_data(root: str) -> dict[str, Any]:
    """Snapshot ``data/raw`` with DVC (``dvc add`` + ``dvc push``) so each run's input is restorable.

    Wiring, not an agent: it only runs when the project is a DVC repository.
    """
    from crowdforge.registry.lineage import raw_dvc_md5

    root_path = Path(root)
    run = _dvc(root_path)
    if run is None:
        get_run_logger().warning("%s is not a DVC repository (or dvc is missing): raw data not versioned", root)
        return {"versioned": False}
    run("add", "-q", "data/raw")
    pushed = bool(run("remote", "default"))
    if pushed:
        run("push", "-q", "data/raw.dvc")
    return {"versioned": True, "pushed": pushed, "raw_md5": raw_dvc_md5(root_path)}


@task(task_run_name="record-in-dvc")
def record_in_dvc(root: str) -> dict[str, Any]:
    """``dvc commit`` the stages this run produced (same deps and outs as ``dvc.yaml``), so ``dvc.lock``
    describes them: afterwards ``dvc status`` is clean and ``dvc repro`` has nothing to do."""
    root_path = Path(root)
    run = _dvc(root_path)
    if run is None or not (root_path / "dvc.yaml").exists():
        return {"committed": False}
    try:
        run("commit", "-f", "-q")
    except RuntimeError as exc:  # the model is registered already: say so, do not fail the run for it
        get_run_logger().warning("dvc.lock not updated (dvc repro will rerun the stages): %s", exc)
        return {"committed": False}
    return {"committed": True}


def _fresh(fn: Task, stage: Stage, root: Path, force: bool) -> Task:
    """Refresh the cache when forced or when the stage's outputs are gone."""
    return fn.with_options(refresh_cache=True) if force or not outputs_exist(stage, root) else fn


@flow(name="collaborative_training", log_prints=True)
def collaborative_training(params_file: str = "params.yaml", root: str = ".",
                           overrides: dict[str, Any] | None = None, force: bool = False) -> dict[str, Any]:
    """ingest → validate → reputation → augment → pretrain → finetune (members) → federated → ensemble → register
    → promote.

    Holds the project's run lock (:mod:`crowdforge.run_lock`): a second run on the same project,
    scheduled or manual, refuses instead of writing the same blackboard.
    """
    with run_lock(Paths(Path(root).resolve()), what="collaborative_training flow"):
        return _pipeline(params_file, root, overrides, force)


def _pipeline(params_file: str, root: str, overrides: dict[str, Any] | None, force: bool) -> dict[str, Any]:
    from prefect.runtime import flow_run

    logger = get_run_logger()
    root_path = Path(root).resolve()
    params = load_params(params_file, overrides)
    common = {"params_file": str(Path(params_file).resolve()), "root": str(root_path), "overrides": overrides}
    timeline: list[dict[str, Any]] = []

    def record(label: str, seconds: float | None, state: Any, result: dict[str, Any]) -> None:
        timeline.append({"stage": label, "seconds": None if seconds is None else round(seconds, 2),
                         "cached": state.name == "Cached", "metrics": result})
        logger.info("%s: %s%s", label, state.name, "" if seconds is None else f" in {seconds:.1f}s")

    def reused(label: str) -> dict[str, Any] | None:
        """The stage's report when its last run, by this flow or by `dvc repro`, had today's inputs."""
        if force or not up_to_date(STAGES[label], params, root_path):
            return None
        from crowdforge import io

        report = _brief(io.read_json(Paths(root_path).report(label)))
        timeline.append({"stage": label, "seconds": 0.0, "cached": True, "metrics": report})
        logger.info("%s: up to date (its last run had the same deps, code and params)", label)
        return report

    def call(label: str, fn: Task, **kwargs: Any) -> dict[str, Any]:
        t0 = time.perf_counter()
        state = fn(return_state=True, **kwargs, **common)
        result = state.result()
        record(label, time.perf_counter() - t0, state, result)
        return result

    t0 = time.perf_counter()
    state = version_raw_data(root=str(root_path), return_state=True)
    record("version-raw-data", time.perf_counter() - t0, state, state.result())

    prev: Any = None
    for name in BUILD_STAGES[: BUILD_STAGES.index("finetune")]:  # finetune: members as concurrent tasks
        prev = reused(name) or call(name, _fresh(run_stage, STAGES[name], root_path, force), name=name, upstream=prev)

    prev = reused("finetune") or _finetune(params, common, root_path, force, prev, record, timeline)
    prev = reused("federated") or call("federated", _fresh(run_stage, STAGES["federated"], root_path, force),
                                       name="federated", upstream=prev)
    prev = reused("ensemble") or call("ensemble", _fresh(run_stage, STAGES["ensemble"], root_path, force),
                                      name="ensemble", upstream=prev)
    prev = call("register", register, upstream=prev, flow_run_id=str(flow_run.id))
    decision = call("promote", promote, upstream=prev)
    dvc = record_in_dvc(root=str(root_path))
    return {"stages": timeline, "model": prev, "promotion": decision, "flow_run_id": str(flow_run.id), "dvc": dvc}


def _finetune(params: Params, common: dict[str, Any], root_path: Path, force: bool, prev: Any,
              record: Any, timeline: list[dict[str, Any]]) -> dict[str, Any]:
    """The members as concurrent tasks, then the finetune report (recorded as one stage run)."""
    t0 = time.perf_counter()
    inputs = fingerprint(STAGES["finetune"], params, root_path)
    workers = max(1, params.runtime.max_workers)
    threads = params.runtime.torch_threads or max(1, (os.cpu_count() or 1) // workers)
    # transformers resolves its names lazily, and two threads resolving one at the same time can
    # fail (ImportError on `set_seed`): resolve what members use once, here, before they start.
    from transformers import AutoModel, AutoTokenizer, set_seed  # noqa: F401

    import crowdforge.agents.finetune  # noqa: F401

    futures = [_fresh(train_member, _stage("finetune", m.name), root_path, force).submit(
                   name="finetune", member=m.name, upstream=prev, threads=threads, **common)
               for m in params.finetune.members]
    members = []
    for m, future in zip(params.finetune.members, futures):
        future.wait()
        members.append(future.state.result())
        cached = future.state.name == "Cached"
        record(f"finetune:{m.name}", None if cached else members[-1].get("seconds"), future.state, members[-1])
    report = finetune_report(results=members, **common)
    record_run(STAGES["finetune"], root_path, inputs)
    timeline.append({"stage": "finetune", "seconds": round(time.perf_counter() - t0, 2),
                     "cached": all(t["cached"] for t in timeline if t["stage"].startswith("finetune:")),
                     "metrics": report})
    return report


def build_flow(params: Params):
    """The flow with the task runner ``params.runtime`` asks for."""
    workers = max(1, params.runtime.max_workers)
    if params.runtime.task_runner == "threads":
        runner = ThreadPoolTaskRunner(max_workers=workers)
    elif params.runtime.task_runner == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as exc:  # optional engine, see README
            raise RuntimeError("runtime.task_runner=dask needs `pip install prefect-dask`") from exc
        runner = DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1})
    return collaborative_training.with_options(task_runner=runner)
