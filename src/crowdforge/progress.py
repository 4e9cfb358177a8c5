"""Progress of the long steps (pretraining steps, each member's epochs, refinement rounds, scoring),
shown where the user looks: a tqdm bar on a terminal, and whatever sink the driver adds.

Agents stay free of Prefect: they call :func:`track`, and the Prefect flow registers a sink (per
task, through a context variable) that mirrors the same progress into a Prefect progress artifact,
so the UI shows where a run is. Not on a terminal (CI, a log file, ``make run | tee``) or with
``CROWDFORGE_PROGRESS=0`` (``crowdforge --quiet``), no bar is drawn.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
from collections.abc import Callable, Iterator

# a sink is told (description, done, total) as work advances
Sink = Callable[[str, int, int], None]
_SINKS: contextvars.ContextVar[tuple[Sink, ...]] = contextvars.ContextVar("crowdforge_progress_sinks", default=())


def bars_enabled() -> bool:
    """A terminal bar only on a terminal, and not when ``CROWDFORGE_PROGRESS=0``."""
    return os.environ.get("CROWDFORGE_PROGRESS", "1") != "0" and sys.stderr.isatty()


@contextlib.contextmanager
def sink(fn: Sink) -> Iterator[None]:
    """Send every :func:`track` inside this block (this context) to ``fn`` as well."""
    token = _SINKS.set((*_SINKS.get(), fn))
    try:
        yield
    finally:
        _SINKS.reset(token)


@contextlib.contextmanager
def track(total: int, description: str) -> Iterator[Callable[[int], None]]:
    """A progress counter for ``total`` units of work; yields ``advance(n=1)``."""
    sinks = _SINKS.get()
    bar = None
    if bars_enabled() and total > 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=description, leave=False, dynamic_ncols=True, file=sys.stderr)
    done = 0

    def advance(n: int = 1) -> None:
        nonlocal done
        done += n
        if bar is not None:
            bar.update(n)
        for s in sinks:
            s(description, done, total)

    try:
        for s in sinks:
            s(description, 0, total)
        yield advance
    finally:
        if bar is not None:
            bar.close()
