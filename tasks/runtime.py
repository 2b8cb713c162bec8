"""The process environment kaizen runs in: offline, quiet, Prefect state inside the workspace.

One place sets these, because every entry point (CLI, tests, benchmarks, the MLflow pyfunc
in a server) must agree: a hub download or a chatty analytics call is a bug anywhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

OFFLINE_AND_QUIET = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "GX_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "GIT_PYTHON_REFRESH": "quiet",
    # MLflow 3 unpickles some model formats (cloudpickled pyfuncs, sklearn, evaluation
    # artifacts) unless this is false; kaizen's pyfunc is model-from-code with safetensors
    # weights, so a pickle in a registered model can only be a tampered one.
    "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
    # A workspace's first command migrates a new Prefect database before the temporary server
    # answers; Prefect's 20 s default was exceeded on a loaded 2-core machine ("Timed out while
    # attempting to connect to ephemeral Prefect API server"), failing a command that had work to do.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}


def set_runtime_defaults(state_dir: Path | str | None = None) -> None:
    """Set the defaults that are not already set (a user's own value always wins).

    With `state_dir` (a workspace's `.kaizen/`), Prefect keeps its home there, so the run
    history of a workspace travels with it and two workspaces never share a database.
    """
    for key, value in OFFLINE_AND_QUIET.items():
        os.environ.setdefault(key, value)
    if state_dir is not None:
        os.environ.setdefault("PREFECT_HOME", str(Path(state_dir) / "prefect"))
        # While `kaizen serve` runs, every command of the workspace talks to its Prefect server
        # (one writer of the Prefect database; `kaizen approve` reaches the paused run there).
        url = served_api_url(Path(state_dir))
        if url and "PREFECT_API_URL" not in os.environ:
            os.environ["PREFECT_API_URL"] = url


def serve_record(state_dir: Path) -> Path:
    return Path(state_dir) / "serve.json"


def read_serve_record(state_dir: Path) -> dict:
    try:
        return json.loads(serve_record(state_dir).read_text())
    except (OSError, ValueError):
        return {}


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A killed process whose parent died too stays a zombie where nothing reaps orphans (a
    # container without an init): it answers signal 0 but runs nothing.
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def served_api_url(state_dir: Path) -> str | None:
    """The API of the Prefect server `kaizen serve` started for this workspace, if it runs."""
    record = read_serve_record(state_dir)
    return record.get("api_url") if record.get("embedded") and pid_alive(record.get("server_pid")) else None
