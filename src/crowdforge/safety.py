"""What a hostile contributor must not be able to do through crowdforge's files.

* Run a formula in the spreadsheet of whoever opens an exported CSV (CWE-1236): text cells that
  start like a formula are prefixed with a quote (:func:`neutralise_formulas`).
* Reach a path outside the data folder through a file name, a folder name or a contributor id
  (CWE-22): a path built from contributed text goes through :func:`safe_join` (or is named after a
  content hash instead), and contribution files are opened with :func:`open_regular_file`, which
  follows no symbolic link and refuses FIFOs, devices and sockets (a FIFO would hang the run).
* Have anything executed: contributions are parsed as text or Parquet, never unpickled or eval'd.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

import pandas as pd

# ASCII triggers (OWASP CSV injection) and their full-width forms, which some spreadsheets fold.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def neutralise_cell(value: object) -> object:
    """Prefix a text cell that a spreadsheet would evaluate with a quote; numbers pass through."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def neutralise_formulas(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` safe to export as CSV (see :func:`neutralise_cell`)."""
    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object or pd.api.types.is_string_dtype(out[col]):
            out[col] = out[col].map(neutralise_cell)
    return out


class UnsafePath(ValueError):
    """A path built from contributed text would leave its base folder."""


def safe_join(base: Path, *parts: str) -> Path:
    """``base / parts`` after checking the result stays inside ``base`` (symlinks resolved).

    Absolute parts, ``..`` segments, NUL bytes and symlinks pointing out all raise
    :class:`UnsafePath`; the caller decides what to do with the offending input.
    """
    for p in parts:
        if not p or "\x00" in p or Path(p).is_absolute():
            raise UnsafePath(f"unsafe path component {p!r}")
    root = base.resolve()
    candidate = root.joinpath(*parts).resolve()
    if candidate != root and not candidate.is_relative_to(root):
        raise UnsafePath(f"{'/'.join(parts)!r} leaves {base}")
    return candidate


def open_regular_file(path: Path) -> BinaryIO:
    """Open ``path`` for reading only if it is a regular file reached without a symlink.

    ``O_NOFOLLOW`` closes the race where a file is swapped for a link after it was listed;
    ``O_NONBLOCK`` keeps a FIFO from blocking the open. Raises ``OSError`` otherwise.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(f"not a regular file (mode {stat.filemode(mode)})")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
