"""End to end through the CLI: a folder of hostile submissions, `stage ingest` then `stage validate`."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]


def _write_hostile(root: Path):
    spec = importlib.util.spec_from_file_location("_hostile_cli", ROOT / "tests" / "agents" / "test_ingest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.write_hostile(root)


def _stage(name: str, root: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("crowdforge")
    env = {**os.environ, "GX_ANALYTICS_ENABLED": "false"}
    return subprocess.run([str(exe), "stage", name, "--root", str(root), "--params", str(ROOT / "params.yaml")],
                          check=False, capture_output=True, text=True, timeout=180, env=env, cwd=root)


def test_stage_ingest_then_validate_on_hostile_folder(tmp_path: Path) -> None:
    paths = _write_hostile(tmp_path)
    # a few more kinds of trouble only the CLI run sees
    c = paths.contributions
    (c / "empty.csv").write_bytes(b"")
    (c / "header_only.tsv").write_text("item_id\ttext\tlabel\n")
    (c / "nested.jsonl").write_text('{"item_id": "n1", "text": {"a": 1}, "label": "neutral"}\n[1, 2]\n')
    (c / "big5.csv").write_bytes(("item_id,text,label\n"
                                  "z1,\u4e2d\u6587\u8a55\u8ad6\u5f88\u597d,positive\n").encode("big5"))
    (c / "big5.csv.encoding").write_text("big5")
    before = {p: p.read_bytes() for p in c.rglob("*") if p.is_file() and not p.is_symlink() and p.name != "pipe.csv"}

    ing = _stage("ingest", tmp_path)
    assert ing.returncode == 0, ing.stderr
    val = _stage("validate", tmp_path)
    assert val.returncode == 0, val.stderr
    assert "row(s) in =" in val.stdout

    report = json.loads(paths.report("validate").read_text())
    ingest_report = json.loads(paths.report("ingest").read_text())
    subs = pd.read_parquet(paths.submissions)
    accepted = pd.read_parquet(paths.accepted)
    quarantined = pd.read_parquet(paths.quarantine / "quarantined.parquet")
    assert report["rows_in"] == ingest_report["rows_in"] == len(subs) == 43
    assert report["rows_in"] == report["rows_accepted"] + report["rows_quarantined"]
    assert (len(accepted), len(quarantined)) == (report["rows_accepted"], report["rows_quarantined"])
    assert sorted(accepted["row_hash"].tolist() + quarantined["row_hash"].tolist()) == sorted(subs["row_hash"])
    assert sum(v["rows_in"] for v in report["by_contributor"].values()) == report["rows_in"]
    assert sum(report["by_reason"].values()) >= report["rows_quarantined"]
    assert "z1" in set(accepted["item_id"])  # declared Big5 file read correctly
    nested = quarantined[quarantined["source_file"].str.endswith("nested.jsonl")]
    assert len(nested) == 2 and nested["reasons"].str.startswith("parse_error").all()
    # contributions are read, never modified; nothing is written outside the project folder
    assert all(p.read_bytes() == data for p, data in before.items())
    assert not (tmp_path.parent / "etc").exists()
    assert (tmp_path / report["data_docs"]).is_file()
