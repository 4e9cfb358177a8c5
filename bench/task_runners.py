"""Ensemble members trained serially, in threads, and on a local Dask cluster (Prefect task runners).

Runs the real flow (`crowdforge run`) on the demo data in a scratch project: the first run builds
everything; then, for each runner, the members are deleted so only they retrain (every other stage
is reused from Prefect's cache), and the finetune stage's wall time is read from the run summary.
Two `partial` members make the work worth parallelising. Usage: python bench/task_runners.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).with_name("crowdforge"))
MEMBERS = ("finetune.members=[{name: p1, strategy: partial, seed: 1, unfreeze_layers: 2, max_epochs: 2},"
           " {name: p2, strategy: partial, seed: 2, unfreeze_layers: 2, max_epochs: 2}]")
VARIANTS = {
    "serial (threads, 1 worker)": ["runtime.task_runner=threads", "runtime.max_workers=1"],
    "threads, 2 workers": ["runtime.task_runner=threads", "runtime.max_workers=2"],
    "dask, 2 workers": ["runtime.task_runner=dask", "runtime.max_workers=2"],
}


def run(project: Path, sets: list[str]) -> dict:
    args = [CLI, "run"] + [a for s in [MEMBERS, *sets] for a in ("-S", s)]
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=project, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    summary = json.loads((project / "reports" / "summary.json").read_text())
    stages = {s["stage"]: s for s in summary["stages"]}
    return {"finetune_s": stages["finetune"]["seconds"], "wall_s": round(wall, 1),
            "members": {k: v["seconds"] for k, v in stages.items() if k.startswith("finetune:")}}


def main() -> None:
    project = Path(os.environ.get("BENCH_DIR", "/tmp/crowdforge-bench-runners"))
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir(parents=True)
    shutil.copy(ROOT / "params.yaml", project / "params.yaml")
    subprocess.run([CLI, "demo-data"], cwd=project, check=True, capture_output=True)
    print("warm-up run (builds every stage once)...", flush=True)
    run(project, VARIANTS["serial (threads, 1 worker)"])
    results = {}
    for name, sets in VARIANTS.items():
        shutil.rmtree(project / "models" / "members", ignore_errors=True)
        results[name] = run(project, sets)
        print(name, results[name], flush=True)
    base = results["serial (threads, 1 worker)"]["finetune_s"]
    print("\n| task runner | finetune stage (2 partial members) | speed-up vs serial | whole `crowdforge run` |")
    print("|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['finetune_s']:.1f} s | {base / r['finetune_s']:.2f}x | {r['wall_s']:.1f} s |")
    print(f"\nload average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
