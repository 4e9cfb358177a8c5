"""Real servers on loopback for scheduling, Dask runs and tests: ``prefect server`` and ``mlflow server``.

Each is a context manager that starts the server in its own process group, waits until it answers,
yields its URL, and stops the whole group on exit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


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


@contextlib.contextmanager
def _server(cmd: list[str], health: str, log: Path, env: dict[str, str], timeout: float) -> Iterator[None]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **env},
                                start_new_session=True)
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
    cmd = [_bin("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with _server(cmd, f"http://127.0.0.1:{port}/api/health", home / "server.log", env, timeout):
        yield f"http://127.0.0.1:{port}/api"


@contextlib.contextmanager
def mlflow_server(root: Path, port: int | None = None, timeout: float = 180) -> Iterator[str]:
    """An ``mlflow server`` (SQLite backend, proxied local artifacts under ``root``); yields its URI."""
    port = port or free_port()
    root.mkdir(parents=True, exist_ok=True)
    cmd = [_bin("mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{(root / 'mlflow.db').resolve()}",
           "--artifacts-destination", str((root / "artifacts").resolve()), "--workers", "1"]
    path_env = {"PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    with _server(cmd, f"http://127.0.0.1:{port}/health", root / "server.log", path_env, timeout):
        yield f"http://127.0.0.1:{port}"
