"""Shared test set-up: offline engines, one torch thread per test process, tiny params."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

from crowdforge.runtime import configure_environment  # noqa: E402

configure_environment()
