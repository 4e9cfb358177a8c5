"""Against real servers on loopback: the flow with `prefect server` + `mlflow server`, and the schedule."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipelines.local_servers import mlflow_server, prefect_server

ROOT = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **extra}


@pytest.mark.slow
def test_flow_against_real_prefect_and_mlflow_servers(tiny_project: Path, tmp_path_factory) -> None:
    from mlflow import MlflowClient

    home = tmp_path_factory.mktemp("prefect-home")
    with prefect_server(home) as api_url, mlflow_server(tmp_path_factory.mktemp("mlflow")) as tracking:
        proc = subprocess.run(
            [str(Path(sys.executable).with_name("crowdforge")), "run", "--root", str(tiny_project),
             "--params", str(tiny_project / "params.yaml"), "-S", f"register.tracking_uri={tracking}"],
            cwd=tiny_project, env=_env(PREFECT_API_URL=api_url, PREFECT_HOME=str(home)),
            capture_output=True, text=True, timeout=900, check=False)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "promoted: no champion yet" in proc.stdout

        client = MlflowClient(tracking_uri=tracking, registry_uri=tracking)
        champion = client.get_model_version_by_alias("crowdforge", "champion")
        assert champion.tags["promotion.decision"] == "promoted"

        body = json.dumps({"flows": {"name": {"any_": ["collaborative_training"]}}}).encode()
        req = urllib.request.Request(f"{api_url}/flow_runs/filter", data=body,
                                     headers={"Content-Type": "application/json"})
        runs = json.loads(urllib.request.urlopen(req, timeout=30).read())
        assert [r["state_type"] for r in runs] == ["COMPLETED"]
        assert champion.tags["prefect_flow_run_id"] == runs[0]["id"]


@pytest.mark.slow
def test_schedule_serves_the_cron_deployment(tmp_path_factory) -> None:
    home = tmp_path_factory.mktemp("prefect-sched")
    with prefect_server(home) as api_url:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("crowdforge")), "schedule", "--root", str(ROOT)],
                                env=_env(PREFECT_API_URL=api_url, PREFECT_HOME=str(home)),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deployments: list = []
            deadline = time.time() + 180
            while time.time() < deadline and not deployments:
                assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
                req = urllib.request.Request(f"{api_url}/deployments/filter", data=b"{}",
                                             headers={"Content-Type": "application/json"})
                deployments = json.loads(urllib.request.urlopen(req, timeout=30).read())
                time.sleep(1)
            assert [d["name"] for d in deployments] == ["nightly"]
            crons = [s["schedule"]["cron"] for s in deployments[0]["schedules"]]
            assert crons == ["0 2 * * *"]
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


def _api(api_url: str, path: str, body: dict) -> list[dict]:
    req = urllib.request.Request(f"{api_url}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=30).read())


@pytest.mark.slow
def test_prefect_deploy_and_a_process_worker_run_the_nightly_deployment(tiny_project: Path,
                                                                         tmp_path_factory) -> None:
    """The operator's path: `prefect deploy --all` from prefect.yaml, a run, a worker on the pool."""
    home = tmp_path_factory.mktemp("prefect-deploy")
    prefect = str(Path(sys.executable).with_name("prefect"))
    with prefect_server(home) as api_url:
        env = _env(PREFECT_API_URL=api_url, PREFECT_HOME=str(home), CROWDFORGE_ROOT=str(ROOT))

        def cli(*args: str, timeout: float = 300) -> str:
            proc = subprocess.run([prefect, "--no-prompt", *args], cwd=ROOT, env=env, capture_output=True,
                                  text=True, timeout=timeout, check=False)
            assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
            return proc.stdout

        cli("work-pool", "create", "crowdforge", "--type", "process")
        cli("deploy", "--all")
        [deployment] = _api(api_url, "/deployments/filter", {})
        assert deployment["name"] == "nightly" and deployment["work_pool_name"] == "crowdforge"
        assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["0 2 * * *"]

        params = json.dumps({"root": str(tiny_project), "params_file": str(tiny_project / "params.yaml")})
        cli("deployment", "run", "collaborative_training/nightly", "--params", params)
        cli("worker", "start", "--pool", "crowdforge", "--run-once", timeout=900)

        runs = _api(api_url, "/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [deployment["id"]]},
                                                                 "state": {"type": {"any_": ["COMPLETED", "FAILED",
                                                                                             "CRASHED"]}}}})
        assert [r["state_type"] for r in runs] == ["COMPLETED"], runs
        assert runs[0]["parameters"]["root"] == str(tiny_project)
    from mlflow import MlflowClient

    store = f"sqlite:///{tiny_project / 'mlflow.db'}"
    champion = MlflowClient(tracking_uri=store, registry_uri=store).get_model_version_by_alias("crowdforge", "champion")
    assert champion.tags["prefect_flow_run_id"] == runs[0]["id"]
