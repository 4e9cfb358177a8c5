"""Process set-up shared by the CLI, the Prefect flow and the tests: offline, quiet, bounded threads."""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "TOKENIZERS_PARALLELISM": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # no download bars in the run log (logs are not terminals)
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
}


def configure_environment() -> None:
    """Set the offline/telemetry variables unless the user set them already."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    logging.getLogger("great_expectations").setLevel(logging.WARNING)


def set_torch_threads(n: int) -> int:
    """Use ``n`` intra-op threads (0 = one per core); returns the number in use."""
    import torch

    n = n if n > 0 else (os.cpu_count() or 1)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def free_port() -> int:
    """A TCP port free on loopback right now (for the local servers and Flower's processes)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def venv_bin(name: str) -> str:
    """A console script of this interpreter's environment (prefect, mlflow, flower-superlink, ...)."""
    return str(Path(sys.executable).with_name(name))
