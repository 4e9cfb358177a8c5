"""Real servers on loopback for runs, scheduling, Dask and tests: Prefect's API and ``mlflow server``.

Each is a context manager that starts the server in its own process group, waits until it answers,
yields its URL, and stops the whole group on exit. :func:`run_api` is the API server of one
``crowdforge run``: the same server Prefect's ephemeral mode starts (uvicorn on Prefect's app
factory, SQLite under ``PREFECT_HOME``), but started here as a child that the kernel kills when its
run dies (``PR_SET_PDEATHSIG``), so a run killed with SIGKILL leaves no orphan server holding a port.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from crowdforge.runtime import free_port, venv_bin


def wait_until_up(url: str, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}; log: {log}\n"
                               + log.read_text(errors="replace")[-2000:])
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"no answer from {url} after {timeout:.0f}s; log: {log}")


def _prctl() -> Any:
    """libc's ``prctl``, loaded in the parent: the child between fork and exec must not import."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    return ctypes.CDLL("libc.so.6", use_errno=True).prctl


_PRCTL = _prctl()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask the kernel to SIGKILL this process when the process that started it dies (Linux)."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def _server(cmd: list[str], health: str, log: Path, env: dict[str, str], timeout: float,
            bound_to_parent: bool = False) -> Iterator[None]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **env},
                                start_new_session=True,  # the hook only calls prctl, loaded beforehand:
                                preexec_fn=_die_with_parent if bound_to_parent else None)  # noqa: PLW1509
    try:
        wait_until_up(health, proc, timeout, log)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def prefect_server(home: Path, port: int | None = None, timeout: float = 180) -> Iterator[str]:
    """A ``prefect server`` with its own SQLite database under ``home``; yields ``PREFECT_API_URL``."""
    port = port or free_port()
    env = {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": os.environ.get("PREFECT_UI_ENABLED", "true")}
    env.pop("PREFECT_API_URL", None)
    cmd = [venv_bin("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with _server(cmd, f"http://127.0.0.1:{port}/api/health", home / "server.log", env, timeout):
        yield f"http://127.0.0.1:{port}/api"


@contextlib.contextmanager
def run_api(home: Path, timeout: float = 180) -> Iterator[str]:
    """Prefect's API for one run, as a child process that dies with its parent; yields ``PREFECT_API_URL``.

    One uvicorn process (what ``SubprocessASGIServer``, Prefect's ephemeral mode, runs) on a free
    loopback port, on the SQLite database under ``home`` (``PREFECT_HOME``), UI off.
    """
    import importlib.util

    # not `import prefect`: its settings are read at import, before the caller sets PREFECT_API_URL
    spec = importlib.util.find_spec("prefect")
    assert spec is not None and spec.origin is not None, "prefect is not installed"
    port = free_port()
    env = {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "0",
           "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(spec.origin).parent.parent), "--factory",
           "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "error", "--lifespan", "on"]
    with _server(cmd, f"http://127.0.0.1:{port}/api/health", home / "run-api.log", env, timeout,
                 bound_to_parent=True):
        yield f"http://127.0.0.1:{port}/api"


@contextlib.contextmanager
def mlflow_server(root: Path, port: int | None = None, timeout: float = 180) -> Iterator[str]:
    """An ``mlflow server`` (SQLite backend, proxied local artifacts under ``root``); yields its URI."""
    port = port or free_port()
    root.mkdir(parents=True, exist_ok=True)
    cmd = [venv_bin("mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{(root / 'mlflow.db').resolve()}",
           "--artifacts-destination", str((root / "artifacts").resolve()), "--workers", "1"]
    path_env = {"PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    with _server(cmd, f"http://127.0.0.1:{port}/health", root / "server.log", path_env, timeout):
        yield f"http://127.0.0.1:{port}"
