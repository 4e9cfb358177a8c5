"""Both drivers in a real git + DVC repository share one state: after `crowdforge run`, `dvc status` is
clean and `dvc repro` runs nothing; `dvc repro` runs the same stages, and `crowdforge run` then reuses
what it produced."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from crowdforge import io
from crowdforge.stages import BUILD_STAGES, STAGES

ROOT = Path(__file__).resolve().parents[2]


def sh(*args: str, cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PREFECT_HOME": str(cwd / ".crowdforge" / "prefect"),
           "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(cwd / ".crowdforge" / "prefect-results")}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_dvc_repro_twice(tiny_project: Path) -> None:
    repo = tiny_project
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    shutil.copy(ROOT / ".gitignore", repo / ".gitignore")
    sh("git", "init", "-q", cwd=repo)
    sh("dvc", "init", "-q", cwd=repo)
    sh("dvc", "config", "core.analytics", "false", cwd=repo)
    sh("dvc", "remote", "add", "-d", "local", str(repo / ".dvc-remote"), cwd=repo)
    sh("dvc", "add", "-q", "data/raw", cwd=repo)

    # the Prefect flow first: it leaves dvc.lock behind, so DVC has nothing to do
    sh("crowdforge", "run", cwd=repo)
    assert io.read_json(repo / "reports/promote.json")["decision"] == "promoted"
    assert "up to date" in sh("dvc", "status", cwd=repo)
    after_flow = sh("dvc", "repro", cwd=repo)
    assert "Running stage" not in after_flow and "up to date" in after_flow

    out = sh("dvc", "repro", "-f", cwd=repo)  # DVC runs every stage itself (the same agents)
    for stage in STAGES:
        assert f"Running stage '{stage}'" in out
    assert io.read_json(repo / "reports/promote.json")["decision"] == "kept"  # the same ensemble, the same version

    again = sh("dvc", "repro", cwd=repo)
    assert "Running stage" not in again and "up to date" in again
    assert "up to date" in sh("dvc", "status", cwd=repo)
    # and the flow reuses what DVC produced
    sh("crowdforge", "run", cwd=repo)
    stages = {row["stage"]: row["cached"] for row in io.read_json(repo / "reports/summary.json")["stages"]}
    assert all(stages[s] for s in BUILD_STAGES), stages
    # push / pull round trip: a fresh clone pulls exactly these artifacts from the remote
    sh("dvc", "push", "-q", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "run", cwd=repo)
    clone = repo.parent / f"{repo.name}-clone"
    sh("git", "clone", "-q", str(repo), str(clone), cwd=repo.parent)
    sh("dvc", "pull", "-q", cwd=clone)
    for rel in ("data/interim/accepted.parquet", "data/processed/labels.parquet", "models/ensemble/ensemble.json"):
        assert (clone / rel).read_bytes() == (repo / rel).read_bytes(), rel
    assert "up to date" in sh("dvc", "status", cwd=clone)

    # an experiment: `dvc exp run -S` sets params.yaml, reruns what depends on it, and
    # `dvc exp show` lists the param and the metrics from the stage reports
    sh("dvc", "exp", "run", "-q", "-n", "full-ft", "-S", "finetune.strategy=full", cwd=repo)
    shown = sh("dvc", "exp", "show", "--md", "--no-pager", cwd=repo)
    assert "full-ft" in shown and "finetune.strategy" in shown and "test_accuracy" in shown
