"""Speed of truth inference as a user meets it, side by side in one run (issue 12's goals).

    python bench/aggregation_speed.py [--sizes 1000000,10000000]

For each synthetic crowd size (bench/synthetic_crowd.py, seed 1): each fit in its own process
(``bench/aggregation.py --child``: wall time of the fit, peak RSS including generating the crowd)
for crowdforge's default and ``dawid_skene`` and crowd-kit's DawidSkene; at 1M labels also the
``crowdforge aggregate`` command end to end (start-up, reading the CSV, fitting, writing),
timed from outside. Writes the "Truth inference speed" section of BENCHMARKS.md (``--no-write``:
print only).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from aggregation import in_subprocess, synthetic, write_section

METHODS = ("cf auto", "cf dawid_skene", "ck DawidSkene")


def command_wall(n: int) -> float:
    lab, _ = synthetic(n)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "labels.csv"
        lab.rename(columns={"task": "item"}).to_csv(src, index=False)
        exe = Path(sys.executable).with_name("crowdforge")
        t0 = time.perf_counter()
        subprocess.run([str(exe), "aggregate", "--labels", str(src), "--out", str(Path(tmp) / "out.csv")],
                       check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000000,10000000")
    ap.add_argument("--no-write", action="store_true", help="print only")
    a = ap.parse_args()
    load0 = os.getloadavg()
    lines = ["| labels | what | accuracy | wall (s) | crowd-kit DawidSkene fit / this | peak RSS (MB) |",
             "|---|---|---|---|---|---|"]
    for n in (int(s) for s in a.sizes.split(",")):
        res = {m: in_subprocess(m, f"syn:{n}", 900) for m in METHODS}
        ref = res["ck DawidSkene"].get("wall")
        for m, r in res.items():
            if "error" in r:
                lines.append(f"| {n:,} | {m} | {r['error']} | | | |")
                continue
            ratio = f"{ref / r['wall']:.1f}x" if ref else "–"
            lines.append(f"| {n:,} | {m} fit | {r['acc']:.4f} | {r['wall']:.2f} | {ratio} | {r['peak_rss_mb']:.0f} |")
        if n == 1_000_000:
            w = command_wall(n)
            lines.append(f"| {n:,} | `crowdforge aggregate` end to end | | {w:.2f} | "
                         + (f"{ref / w:.1f}x" if ref else "–") + " | |")
        print("\n".join(lines[-4:]), flush=True)
    load1 = os.getloadavg()
    header = (f"Command: `python bench/aggregation_speed.py` (part of `make bench-aggregation`), "
              f"{time.strftime('%Y-%m-%d %H:%M')}; {os.cpu_count()} cores, load average {load0[0]:.2f} at the start "
              f"and {load1[0]:.2f} at the end (the machine is shared: compare the ratios, measured in the same run, "
              "not the seconds). Each fit in its own process with one BLAS thread; peak RSS includes generating the "
              "crowd. Synthetic crowds of bench/synthetic_crowd.py (4 classes, 200,000 items and 2,000 workers per "
              "million labels).")
    text = "\n".join([header, "", *lines])
    print(text)
    if not a.no_write:
        write_section(text, title="## Truth inference speed")


if __name__ == "__main__":
    main()
