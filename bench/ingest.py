"""Ingestion + validation throughput (rows/s) and peak memory on generated contributions.

Why this shape: ingest must stream (memory bounded by ``ingest.chunk_rows``, not by file size), so
the benchmark runs the real CLI stages (``crowdforge stage ingest`` then ``validate``) as separate
processes on a small and a large data set and reports each process's peak RSS (``wait4``). A flat
ingest peak from the small to the large set is the evidence that memory is bounded.

The data is generated in a temporary folder (never in the repo): half the rows in one large CSV, the
rest in 10,000-row files of 50 contributors (item ``it<i>`` is row ``i``: contributors overlap on items
and every item has one text), mixed CSV/TSV/JSON Lines, with about 0.5% malformed
rows (bad label, missing text, too many fields, personal data) so every path of the suite runs.

    python bench/ingest.py                 # 100k and 1M rows
    python bench/ingest.py --rows 200000   # one size
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("negative", "neutral", "positive")
WORDS = ["the", "soup", "was", "cold", "and", "the", "staff", "slow", "the", "room", "was", "clean", "and", "the",
         "view", "great", "a", "fine", "place", "to", "stay", "never", "again", "really", "good", "value", "noisy",
         "street", "friendly", "people", "late", "bus", "quick", "service"]
TS = "2026-01-05T08:00:00Z"


def item_text(i: int) -> str:
    """The one text of item ``i`` (a pure function: every contributor labelling it sends the same)."""
    rng = random.Random(i)
    return f"item {i} " + " ".join(rng.choice(WORDS) for _ in range(8))


def _row(rng: random.Random, cid: str, i: int) -> list[str]:
    """Row ``i`` of a file: item ``it<i>`` (unique within the file), ~0.5% malformed."""
    r = rng.random()
    label = rng.choice(CLASSES)
    text = item_text(i)
    if r < 0.001:
        label = "great"
    elif r < 0.002:
        text = ""
    elif r < 0.003:
        return [cid, f"it{i}", text, label, TS, "extra"]
    elif r < 0.004:
        text += " mail bob@example.com"
    elif r < 0.005:
        text += " call +44 20 7946 0958"
    return [cid, f"it{i}", text, label, TS]


def generate(root: Path, n_rows: int, seed: int = 0) -> None:
    """``n_rows`` rows under ``root/data/raw`` (see module doc) plus a tiny gold file."""
    rng = random.Random(seed)
    contrib = root / "data" / "raw" / "contributions"
    contrib.mkdir(parents=True)
    big = n_rows // 2
    header = ["contributor_id", "item_id", "text", "label", "submitted_at"]
    with (contrib / "bigco.csv").open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        for i in range(big):
            w.writerow(_row(rng, "bigco", i))
    left, k = n_rows - big, 0
    while left > 0:
        cid = f"c{k % 50:02d}"
        n = min(10_000, left)
        kind = ("csv", "tsv", "jsonl")[k % 3]
        folder = contrib / cid
        folder.mkdir(exist_ok=True)
        path = folder / f"batch{k}.{kind}"
        with path.open("w", newline="") as fh:
            if kind == "jsonl":
                for i in range(n):
                    r = _row(rng, cid, i)
                    fh.write(json.dumps(dict(zip(header, r[:5]))) + "\n")
            else:
                w = csv.writer(fh, delimiter="," if kind == "csv" else "\t", lineterminator="\n")
                w.writerow(header)
                for i in range(n):
                    w.writerow(_row(rng, cid, i))
        left -= n
        k += 1
    (root / "data" / "raw" / "gold.csv").write_text("item_id,text,label,split\ng1,good .,positive,test\n")


def run_stage(stage: str, root: Path) -> dict[str, float]:
    """Run ``crowdforge stage <stage>`` in its own process; wall seconds and peak RSS (MiB)."""
    exe = Path(sys.executable).with_name("crowdforge")
    cmd = [str(exe), "stage", stage, "--root", str(root), "--params", str(ROOT / "params.yaml")]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{stage} failed ({proc.returncode}): {err[-2000:]}")
    return {"seconds": round(seconds, 1), "peak_mib": round(usage.ru_maxrss / 1024, 0)}


def bench(n_rows: int) -> dict[str, object]:
    tmp = Path(tempfile.mkdtemp(prefix="crowdforge-bench-"))
    try:
        t0 = time.perf_counter()
        generate(tmp, n_rows)
        gen_s = time.perf_counter() - t0
        size_mb = sum(p.stat().st_size for p in (tmp / "data" / "raw").rglob("*") if p.is_file()) / 2**20
        ing = run_stage("ingest", tmp)
        val = run_stage("validate", tmp)
        report = json.loads((tmp / "reports" / "validate.json").read_text())
        assert report["rows_in"] == n_rows == report["rows_accepted"] + report["rows_quarantined"], report
        total = ing["seconds"] + val["seconds"]
        return {
            "rows": n_rows, "input_mib": round(size_mb, 1), "generate_s": round(gen_s, 1),
            "ingest_s": ing["seconds"], "ingest_rows_per_s": round(n_rows / ing["seconds"]),
            "ingest_peak_mib": ing["peak_mib"],
            "validate_s": val["seconds"], "validate_rows_per_s": round(n_rows / val["seconds"]),
            "validate_peak_mib": val["peak_mib"], "validate_inner_s": report["seconds"],
            "total_rows_per_s": round(n_rows / total),
            "rows_quarantined": report["rows_quarantined"], "by_reason": report["by_reason"],
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="*", default=[100_000, 1_000_000])
    args = ap.parse_args()
    load_before = os.getloadavg()
    results = [bench(n) for n in args.rows]
    out = {
        "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}",
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "results": results,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
