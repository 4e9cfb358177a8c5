"""The learnware package's files go to crowdforge's cache folder, never to a new ``~/.learnware``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from crowdforge.market.learnware_home import learnware_home

SPEC = "import numpy as np; from crowdforge.market.spec import rkme; rkme(np.eye(12, 4) + 0.1, 3)"


def test_home_is_the_env_folder_else_the_user_cache(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CROWDFORGE_LEARNWARE_HOME", str(tmp_path / "lw"))
    assert learnware_home() == tmp_path / "lw"
    monkeypatch.delenv("CROWDFORGE_LEARNWARE_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert learnware_home() == tmp_path / "xdg" / "crowdforge" / "learnware"


def test_a_specification_leaves_the_home_folder_alone(tmp_path: Path) -> None:
    # a fresh process: the first `learnware` import is the one that creates folders
    env = {k: v for k, v in os.environ.items() if k not in ("CROWDFORGE_LEARNWARE_HOME", "XDG_CACHE_HOME")}
    env["HOME"] = str(tmp_path)
    subprocess.run([sys.executable, "-c", SPEC], env=env, check=True, timeout=300)
    assert not (tmp_path / ".learnware").exists()
    assert (tmp_path / ".cache" / "crowdforge" / "learnware" / ".learnware" / "database").is_dir()
