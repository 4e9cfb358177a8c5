"""Where a model came from: git commit (and whether the tree was dirty) and data hashes.

Data hashes are DVC's when DVC has them (``data/raw.dvc``, ``dvc.lock``); otherwise the md5 of
the file (what DVC records for a file) or of the sorted (path, md5) listing for a folder.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

import yaml


def git_state(root: Path) -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (subprocess.CalledProcessError, FileNotFoundError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}
    return {"git_commit": commit, "git_dirty": str(dirty).lower()}


def md5_path(path: Path) -> str:
    if path.is_file():
        h = hashlib.md5()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    listing = "\n".join(f"{p.relative_to(path)}\t{md5_path(p)}" for p in sorted(path.rglob("*"))
                        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
    return hashlib.md5(listing.encode()).hexdigest() + ".dir"


def _dvc_recorded(root: Path) -> dict[str, str]:
    """Hashes DVC itself recorded: ``*.dvc`` files under data/ and the outs in ``dvc.lock``."""
    found: dict[str, str] = {}
    for dvcfile in sorted((root / "data").glob("*.dvc")):
        for out in (yaml.safe_load(dvcfile.read_text()) or {}).get("outs", []):
            found[str(Path("data") / out["path"])] = out.get("md5", "")
    lock = root / "dvc.lock"
    if lock.exists():
        for stage in (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).values():
            for out in stage.get("outs", []):
                if "md5" in out:
                    found[out["path"]] = out["md5"]
    return found


def data_versions(root: Path, rel_paths: list[str]) -> dict[str, dict[str, str]]:
    """For each path: the md5 now, and the hash DVC recorded (when it did) — equal means in sync."""
    recorded = _dvc_recorded(root)
    out: dict[str, dict[str, str]] = {}
    for rel in rel_paths:
        p = root / rel
        if p.exists():
            out[rel] = {"md5": md5_path(p), "dvc": recorded.get(rel, "")}
    return out


def raw_dvc_md5(root: Path) -> str:
    """The hash DVC recorded for ``data/raw`` in ``data/raw.dvc`` ('' when DVC does not track it)."""
    dvcfile = root / "data" / "raw.dvc"
    if not dvcfile.exists():
        return ""
    outs = (yaml.safe_load(dvcfile.read_text()) or {}).get("outs", [])
    return str(outs[0].get("md5", "")) if outs else ""


def restore_commands(tags: dict[str, str], run_id: str) -> list[str]:
    """The exact shell commands that bring back a registered version's code and data."""
    commit = tags.get("git_commit", "unknown")
    cmds = []
    if commit != "unknown":
        note = ("  # the tree was dirty: uncommitted changes are not recoverable" if tags.get("git_dirty") == "true"
                else "")
        cmds.append(f"git checkout {commit}{note}")
    cmds.append(f"mlflow artifacts download -u runs:/{run_id}/lineage -d lineage-{run_id[:8]}")
    cmds.append(f"cp lineage-{run_id[:8]}/params.yaml params.yaml")
    if tags.get("data.raw.dvc"):
        cmds.append(f"cp lineage-{run_id[:8]}/raw.dvc data/raw.dvc && dvc pull data/raw.dvc   "
                    f"# raw data {tags['data.raw.dvc']}")
    cmds.append("dvc repro   # rebuilds every stage from that code, data and params")
    if tags.get("data.labels.md5"):
        cmds.append(f"md5sum data/processed/labels.parquet   # expect {tags['data.labels.md5']}")
    return cmds
