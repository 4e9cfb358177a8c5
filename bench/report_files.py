"""Writing a benchmark's results: its own section of BENCHMARKS.md and its JSON file, atomically.

Several benchmarks may run at once and each edits only its own section, so the file is re-read right
before the write and replaced in one ``os.replace``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_section(heading: str, md: str, path: Path) -> None:
    """Replace the section that starts with the line ``heading`` (appended when absent)."""
    text = path.read_text(encoding="utf-8")
    head = heading + "\n"
    body = head + "\n" + md.rstrip() + "\n"
    i = text.find(head)
    if i < 0:
        new = text.rstrip("\n") + "\n\n" + body
    else:
        j = text.find("\n## ", i + len(head))
        new = text[:i] + body + ("\n" + text[j + 1:] if j >= 0 else "")
    _atomic_write(path, new)


def write_json(res: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, json.dumps(res, indent=2, default=str))
