"""The process environment kaizen runs in: offline, quiet, Prefect state inside the workspace.

One place sets these, because every entry point (CLI, tests, benchmarks, the MLflow pyfunc
in a server) must agree: a hub download or a chatty analytics call is a bug anywhere.
"""

from __future__ import annotations

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
