from __future__ import annotations

import os
import sys
import time
import tomllib
from pathlib import Path

from crowdforge.federated.deployment import Processes, _spawn, flower_env, write_app, write_connection


def test_stop_also_kills_what_a_party_left_behind(tmp_path: Path) -> None:
    # a leader that exits on SIGTERM and leaves a child that ignores it (as a hung ServerApp would)
    script = ("import subprocess, sys, time\n"
              "subprocess.Popen([sys.executable, '-c', 'import signal, time; "
              "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)'])\n"
              "time.sleep(300)\n")
    log = tmp_path / "leader.log"
    p = _spawn([sys.executable, "-c", script], dict(os.environ), log, tmp_path)
    time.sleep(1.0)
    procs = Processes([p], [log])
    procs.stop()
    time.sleep(0.2)
    assert not live_members(p.pid)


def live_members(pgid: int) -> list[int]:
    """Processes of the group that are not zombies (a container's init may not reap them)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(d.name))
    return out


def test_the_app_names_crowdforges_components_and_carries_the_job(tmp_path: Path) -> None:
    write_app(tmp_path / "app", {"rounds": 3, "secagg": True, "spec": "{}"})
    doc = tomllib.loads((tmp_path / "app" / "pyproject.toml").read_text())
    flwr = doc["tool"]["flwr"]["app"]
    assert flwr["components"] == {"serverapp": "crowdforge.federated.server_app:app",
                                  "clientapp": "crowdforge.federated.client_app:app"}
    assert flwr["config"] == {"rounds": 3, "secagg": True, "spec": "{}"}
    write_connection(tmp_path / "home", "127.0.0.1:9093")
    conn = tomllib.loads((tmp_path / "home" / "config.toml").read_text())["superlink"]
    assert conn["default"] == "crowdforge" and conn["crowdforge"] == {"address": "127.0.0.1:9093", "insecure": True}


def test_flower_processes_stay_offline_and_out_of_the_home_folder(tmp_path: Path) -> None:
    env = flower_env(tmp_path)
    assert env["FLWR_HOME"] == str(tmp_path)
    assert env["FLWR_TELEMETRY_ENABLED"] == "0"
    assert env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
