"""One pipeline run per project at a time.

The nightly schedule, a manual ``crowdforge run``, a deployment's worker and ``crowdforge stage``
(what ``dvc repro`` calls) all write the same blackboard, so each holds ``.crowdforge/run.lock``
while it works. The lock is an OS file lock (``flock``): the kernel releases it when its process
ends, however it ends (SIGKILL included), so a killed run never leaves a stale lock. Who holds it
(pid, command, start time) is written next to it, for the message a second run prints.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from crowdforge.paths import Paths


class RunLocked(RuntimeError):
    """Another run holds the project's lock."""


def _holder(info: Path) -> str:
    try:
        h = json.loads(info.read_text(encoding="utf-8"))
        return f"pid {h['pid']} ({h['command']}), started {h['started']}"
    except (OSError, ValueError, KeyError):
        return "another process"


@contextlib.contextmanager
def run_lock(paths: Paths, wait: float = 0.0, what: str | None = None) -> Iterator[None]:
    """Hold the project's run lock; wait up to ``wait`` seconds for it, then raise :class:`RunLocked`.

    Re-entrant within a process (the flow takes it again inside ``crowdforge run``).
    """
    paths.cache.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(paths.cache / "run.lock"), is_singleton=True, thread_local=False)
    info = paths.cache / "run.lock.json"
    try:
        lock.acquire(timeout=wait)
    except Timeout:
        raise RunLocked(f"another crowdforge run is working in {paths.root}: {_holder(info)}; "
                        f"wait for it to finish, or pass --wait SECONDS") from None
    try:
        if lock.lock_counter == 1:
            info.write_text(json.dumps({"pid": os.getpid(), "command": what or " ".join(sys.argv[:3]),
                                        "started": time.strftime("%Y-%m-%d %H:%M:%S")}), encoding="utf-8")
        yield
    finally:
        if lock.lock_counter == 1:
            info.unlink(missing_ok=True)
        lock.release()
