"""Where the ``learnware`` package keeps its files, and its one lazy import.

``learnware/config.py`` derives every path from ``~`` when imported, and ``import learnware`` then
creates ``~/.learnware`` (config root, market pools, sqlite databases, model cache, stdout). Every
crowdforge import of the package goes through :func:`import_learnware`, which puts those files under
:func:`learnware_home` unless a caller chose a folder first with :func:`use_learnware_home`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def use_learnware_home(home: str | Path) -> Path:
    """Keep every file the ``learnware`` package writes (config root, market pools, sqlite databases,
    model cache, stdout, the client's pool) under ``home/.learnware``; returns that root.

    ``learnware/config.py`` computes its paths from ``~`` when imported and ``import learnware`` then
    creates them, so the first import happens with ``HOME`` pointed at ``home`` (and restored);
    if the package was imported already, its config ``C`` is redirected instead. Call it before any
    market is made. ``learnware.init()`` would reset ``C`` to the import-time defaults.
    """
    home = Path(home).resolve()
    root = home / ".learnware"
    if "learnware" not in sys.modules:
        previous = os.environ.get("HOME")
        os.environ["HOME"] = str(home)
        try:
            import learnware  # noqa: F401
        finally:
            if previous is None:
                os.environ.pop("HOME", None)
            else:
                os.environ["HOME"] = previous
    from learnware.config import C

    database = root / "database"
    C.update(root_path=str(root), market_root_path=str(root), database_path=str(database),
             database_url=f"sqlite:///{database}", stdout_path=str(root / "stdout"), cache_path=str(root / "cache"))
    for key in ("root_path", "database_path", "stdout_path", "cache_path"):
        Path(C[key]).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("LEARNWARE_STORAGE_PATH", str(root / "default" / "learnware_pool"))  # LearnwareClient
    return root


def learnware_home() -> Path:
    """Where the ``learnware`` package's files go by default: ``$CROWDFORGE_LEARNWARE_HOME``, else
    crowdforge's folder in the user's cache (``$XDG_CACHE_HOME``, else ``~/.cache``): a cache the user
    can delete, not a new dot-folder in their home."""
    if os.environ.get("CROWDFORGE_LEARNWARE_HOME"):
        return Path(os.environ["CROWDFORGE_LEARNWARE_HOME"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "crowdforge" / "learnware"


def import_learnware() -> None:
    """Import ``learnware`` with its files under :func:`learnware_home` (once per process)."""
    if "learnware" not in sys.modules:
        use_learnware_home(learnware_home())
