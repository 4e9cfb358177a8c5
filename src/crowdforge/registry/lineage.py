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
