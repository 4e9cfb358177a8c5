"""Flower's deployment runtime on this machine: a SuperLink, one SuperNode per site, ``flwr run``.

Every party is a separate process. The SuperLink and each SuperNode get their own ``FLWR_HOME``
(under ``.crowdforge/federated/``), so nothing is written in the home folder, and the SuperLink
never installs the app's dependencies at run time (``--disable-runtime-dependency-installation``:
the Flower app is two entry points into the installed crowdforge package). A SuperNode reads only
the folder in its node config. With ``superlink`` set to ``host:port`` nothing is started here:
the run goes to that SuperLink's control API, whose SuperNodes the partners run themselves
(README: federated sites).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crowdforge.runtime import OFFLINE_ENV, free_port, venv_bin

APP_NAME = "crowdforge-federated"
CONNECTION = "crowdforge"


class FederatedRunError(RuntimeError):
    pass


def flower_env(home: Path) -> dict[str, str]:
    """The environment of every Flower process: offline, quiet, its own FLWR_HOME, this venv's tools."""
    env = dict(os.environ)
    env.update({k: v for k, v in OFFLINE_ENV.items() if k not in env})
    env.update(FLWR_HOME=str(home), FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    return env


def write_app(folder: Path, run_config: dict[str, Any]) -> Path:
    """The Flower app: a pyproject.toml naming crowdforge's ServerApp/ClientApp and the job's run config."""
    import tomli_w

    from crowdforge import io

    doc = {"project": {"name": APP_NAME, "version": "1.0.0", "description": "crowdforge's federated member",
                       "license": "Apache-2.0", "dependencies": []},
           "tool": {"flwr": {"app": {"publisher": "crowdforge",
                                     "components": {"serverapp": "crowdforge.federated.server_app:app",
                                                    "clientapp": "crowdforge.federated.client_app:app"},
                                     "config": run_config}}}}
    io.write_text(folder / "pyproject.toml", tomli_w.dumps(doc))
    return folder


def write_connection(home: Path, address: str, root_certificates: str = "") -> None:
    """The SuperLink connection ``flwr run`` uses (in 1.32 it lives in ``$FLWR_HOME/config.toml``)."""
    import tomli_w

    from crowdforge import io

    conn: dict[str, Any] = {"address": address}
    if root_certificates:
        conn["root-certificates"] = root_certificates
    else:
        conn["insecure"] = True
    io.write_text(home / "config.toml", tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: conn}}))


@dataclass
class Processes:
    procs: list[subprocess.Popen[bytes]]
    logs: list[Path]

    def check_alive(self) -> None:
        for p, log in zip(self.procs, self.logs, strict=True):
            if p.poll() is not None:
                raise FederatedRunError(f"{Path(log).stem} exited with status {p.returncode}: {tail(log)}")

    def stop(self) -> None:
        """SIGTERM every process group (each party with the apps it spawned), a grace period for the
        leaders, then SIGKILL whatever is left in the groups (an app left behind by its leader)."""
        for p in self.procs:
            _killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for p in self.procs:
            _killpg(p.pid, signal.SIGKILL)
            p.wait()


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:  # the group is gone
        pass


def tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(encoding="utf-8", errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _spawn(cmd: Sequence[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as fh:
        return subprocess.Popen(list(cmd), env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=cwd,
                                start_new_session=True)


def wait_for_port(address: str, timeout: float, procs: Processes) -> None:
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs.check_alive()
        with socket.socket() as s:
            if s.connect_ex((host, int(port))) == 0:
                return
        time.sleep(0.2)
    raise FederatedRunError(f"the SuperLink did not open {address} within {timeout:.0f} s")


@contextmanager
def local_federation(work: Path, sites: dict[str, Path],
                     backbone: str | None = None) -> Iterator[tuple[str, Processes]]:
    """A SuperLink and one SuperNode per site on loopback; yields the control API address and the processes;
    stops them all (each with the apps it spawned) on the way out."""
    ports = {k: free_port() for k in ("serverappio", "fleet", "control")}
    addr = {k: f"127.0.0.1:{p}" for k, p in ports.items()}
    link_home = work / "superlink"
    link_home.mkdir(parents=True, exist_ok=True)
    procs = Processes([], [])
    try:
        log = work / "logs" / "superlink.log"
        procs.procs.append(_spawn([venv_bin("flower-superlink"), "--insecure",
                                   "--disable-runtime-dependency-installation",
                                   "--serverappio-api-address", addr["serverappio"],
                                   "--fleet-api-address", addr["fleet"], "--control-api-address", addr["control"],
                                   "--database", str(link_home / "state.db")],
                                  flower_env(link_home), log, link_home))
        procs.logs.append(log)
        wait_for_port(addr["fleet"], 60, procs)
        for name, folder in sites.items():
            home = work / "supernodes" / name
            home.mkdir(parents=True, exist_ok=True)
            node_config = f'data-path="{Path(folder).resolve()}" site-name="{name}"'
            if backbone:
                node_config += f' backbone="{backbone}"'
            log = work / "logs" / f"supernode-{name}.log"
            procs.procs.append(_spawn([venv_bin("flower-supernode"), "--insecure", "--superlink", addr["fleet"],
                                       "--clientappio-api-address", f"127.0.0.1:{free_port()}",
                                       "--node-config", node_config], flower_env(home), log, home))
            procs.logs.append(log)
        wait_for_port(addr["control"], 60, procs)
        yield addr["control"], procs
    finally:
        procs.stop()


def _json_tail(text: str) -> Any:
    return json.loads(text[text.index("{"):])


def run_app(app: Path, home: Path, timeout: float, log: Path, procs: Processes | None = None) -> dict[str, Any]:
    """``flwr run --stream`` the app on the connection in ``home`` (one idle process that returns when
    the run ends; its output goes to ``log``), then the run's final status from ``flwr ls``: the
    stream exits 0 even when the ServerApp fails."""
    env = flower_env(home)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w", encoding="utf-8") as fh:
        proc = subprocess.Popen([venv_bin("flwr"), "run", str(app), CONNECTION, "--stream"], env=env, cwd=home,
                                stdout=fh, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None:
                if procs is not None:
                    procs.check_alive()  # a SuperLink or SuperNode that died: fail now, not at the timeout
                if time.monotonic() > deadline:
                    raise FederatedRunError(f"federated run {_run_id(log)} did not finish within {timeout:.0f} s "
                                            "(stopped)")
                time.sleep(1.0)
        except FederatedRunError:
            proc.kill()
            if _run_id(log):
                subprocess.run([venv_bin("flwr"), "stop", _run_id(log), CONNECTION], check=False, env=env,
                               capture_output=True, cwd=home)
            raise
    run_id = _run_id(log)
    if not run_id:
        raise FederatedRunError(f"flwr run did not start a run:\n{tail(log)}")
    res = subprocess.run([venv_bin("flwr"), "ls", CONNECTION, "--run-id", run_id, "--format", "json"],
                         check=False, env=env, capture_output=True, text=True, cwd=home)
    if res.returncode != 0 or "{" not in res.stdout:
        raise FederatedRunError(f"flwr ls failed for run {run_id}: {res.stdout[-1000:]} {res.stderr[-1000:]}")
    return {"run_id": run_id, **_json_tail(res.stdout)["runs"][0]}


def _run_id(log: Path) -> str:
    import re

    found = re.search(r"started run (\d+)", log.read_text(encoding="utf-8", errors="replace"))
    return found.group(1) if found else ""
