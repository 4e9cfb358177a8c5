"""Agent reports: JSON metrics plus a short markdown summary that later agents and people read."""

from __future__ import annotations

from typing import Any

from crowdforge import io
from crowdforge.paths import Paths


def write_report(paths: Paths, stage: str, metrics: dict[str, Any], summary_md: str) -> dict[str, Any]:
    report = {"stage": stage, **metrics, "summary_md": summary_md}
    io.write_json(paths.report(stage), report)
    io.write_text(paths.reports / f"{stage}.md", summary_md.rstrip() + "\n")
    return report


def read_report(paths: Paths, stage: str) -> dict[str, Any]:
    return io.read_json(paths.report(stage))
