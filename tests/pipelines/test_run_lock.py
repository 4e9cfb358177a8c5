"""One run per project, with real `crowdforge run` processes: a second run refuses while the first
works; a run killed with SIGKILL during fine-tuning leaves no lock and no orphan API server, and the
rerun resumes from the finished stages and gives what an uninterrupted run gives."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crowdforge import io
from crowdforge.paths import Paths
from crowdforge.stages import BUILD_STAGES

CROWDFORGE = str(Path(sys.executable).with_name("crowdforge"))


def _env(root: Path) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PREFECT_HOME": str(root / ".crowdforge" / "prefect"),
           "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(root / ".crowdforge" / "prefect-results")}
    env.pop("PREFECT_API_URL", None)  # each run starts its own API, as `make run` does
    return env


def _cmd(root: Path) -> list[str]:
    return [CROWDFORGE, "run", "--root", str(root), "--params", str(root / "params.yaml")]


def _wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; the parent-death signal is Linux's")
def test_one_run_at_a_time_and_a_killed_run_resumes_cleanly(tiny_project: Path, tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    shutil.copytree(tiny_project, straight)  # the same params and demo data, run without interruption
    paths = Paths(tiny_project)

    first = subprocess.Popen(_cmd(tiny_project), cwd=tiny_project, env=_env(tiny_project), start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: (paths.cache / "run.lock.json").exists(), 120, "the first run to take the lock")
        second = subprocess.run(_cmd(tiny_project), cwd=tiny_project, env=_env(tiny_project), capture_output=True,
                                text=True, timeout=120, check=False)
        assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "another crowdforge run is working" in lines[0] and str(first.pid) in lines[0]

        # kill it with SIGKILL while it fine-tunes: the first member is saved, the report is not yet
        _wait_for(lambda: (paths.member("head-a") / "member.json").exists(), 600, "fine-tuning to start")
        assert not paths.report("finetune").exists()
        servers = [c for c in _children(first.pid) if _alive(c)]
        assert servers, "the run's Prefect API server should be a child of the run"
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
        _wait_for(lambda: not any(_alive(c) for c in servers), 20, "the API server to die with its run")
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)

    # no stale lock: the rerun starts, reuses the finished stages and finishes
    rerun = subprocess.run(_cmd(tiny_project), cwd=tiny_project, env=_env(tiny_project), capture_output=True,
                           text=True, timeout=900, check=False)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    cached = {row["stage"]: row["cached"] for row in io.read_json(paths.reports / "summary.json")["stages"]}
    assert all(cached[s] for s in BUILD_STAGES[: BUILD_STAGES.index("finetune")]), cached

    clean = subprocess.run(_cmd(straight), cwd=straight, env=_env(straight), capture_output=True, text=True,
                           timeout=900, check=False)
    assert clean.returncode == 0, clean.stdout[-3000:] + clean.stderr[-3000:]
    a = pd.read_parquet(paths.test_predictions)
    b = pd.read_parquet(Paths(straight).test_predictions)
    assert a["label"].tolist() == b["label"].tolist()
    np.testing.assert_allclose(a.filter(like="prob_").to_numpy(), b.filter(like="prob_").to_numpy(), atol=1e-5)
    ours, theirs = io.read_json(paths.report("ensemble")), io.read_json(Paths(straight).report("ensemble"))
    assert ours["test_accuracy"] == theirs["test_accuracy"] and ours["test_macro_f1"] == theirs["test_macro_f1"]
