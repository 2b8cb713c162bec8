"""SIGKILL `kaizen ingest` and `kaizen run` at every step that writes, then run the same command
again: it must converge, and `kaizen doctor` must find data/, data.dvc, the manifest, the
remote, the history statistics, the registry, the aliases and the ledger in agreement.

Each case starts from a copy of a prepared workspace (restored at the same path, because the
MLflow store and the DVC config record absolute paths), kills the command at its point with
tests/reliability/killpoint.py (the whole process group, Prefect's server included), checks the
kill happened, re-runs the command as a user would and runs the doctor.

`pytest` runs a bounded subset (CI); `pytest -m slow` runs every point plus kills at random
moments (seeded by KAIZEN_KILL_SEED, printed on failure).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, TINY_CONFIG


@dataclass(frozen=True)
class KillPoint:
    name: str
    scenario: str  # ingest | bootstrap | withdraw: which prepared workspace and which command
    target: str  # MODULE:ATTR whose NTH call is the point
    nth: int = 1
    when: str = "after"


POINTS = [
    # kaizen ingest FILE
    KillPoint("ingest-staged", "ingest", "tasks.ingest:stage_file"),
    KillPoint("ingest-validated", "ingest", "tasks.validate:validate_staged"),
    KillPoint("ingest-report-saved", "ingest", "tasks.validate:save_report"),
    KillPoint("ingest-validation-logged", "ingest", "tasks.tracking:log_validation"),
    KillPoint("ingest-batch-file-written", "ingest", "tasks.ingest:write_atomic", nth=2),
    KillPoint("ingest-manifest-written", "ingest", "tasks.ingest:write_batch"),
    KillPoint("ingest-before-dvc-add", "ingest", "dvc.repo:Repo.add", when="before"),
    KillPoint("ingest-dvc-added", "ingest", "dvc.repo:Repo.add"),
    KillPoint("ingest-pushed", "ingest", "dvc.repo:Repo.push"),
    KillPoint("ingest-committed", "ingest", "tasks.versioning:commit_data"),
    KillPoint("ingest-history-keys-written", "ingest", "tasks.history:write_atomic"),
    KillPoint("ingest-history-recorded", "ingest", "tasks.history:record_batch"),
    # kaizen run: the first cycle (register, challenger alias, ledger, champion alias)
    KillPoint("run-started", "bootstrap", "tasks.tracking:start_cycle_run"),
    KillPoint("run-checkpoint", "bootstrap", "tasks.train:write_checkpoint"),
    KillPoint("run-evaluated", "bootstrap", "tasks.evaluate:evaluate_challenger"),
    KillPoint("run-evaluation-logged", "bootstrap", "tasks.tracking:log_evaluation"),
    KillPoint("run-model-logged", "bootstrap", "mlflow.pyfunc:log_model"),
    KillPoint("run-version-created", "bootstrap", "mlflow.tracking:MlflowClient.create_model_version"),
    KillPoint("run-challenger-alias", "bootstrap", "mlflow.tracking:MlflowClient.set_registered_model_alias"),
    KillPoint("run-registered", "bootstrap", "tasks.cycle:register_version"),
    KillPoint("run-ledger-written", "bootstrap", "tasks.registry:write_ledger_entry"),
    KillPoint("run-champion-alias", "bootstrap", "mlflow.tracking:MlflowClient.set_registered_model_alias", nth=2),
    KillPoint("run-promoted", "bootstrap", "tasks.promotion:move_champion"),
    # kaizen run: a rejected challenger's batch withdrawn to quarantine
    KillPoint("withdraw-batch-moved", "withdraw", "tasks.ingest:withdraw_batch"),
    KillPoint("withdraw-history-forgotten", "withdraw", "tasks.history:forget_batch"),
    KillPoint("withdraw-dvc-added", "withdraw", "dvc.repo:Repo.add"),
    KillPoint("withdraw-committed", "withdraw", "tasks.versioning:commit_data"),
]
# What `pytest` (CI) runs: a kill in the middle of an ingest (after `dvc add`, data/ half
# changed) and one between registration and promotion (the version is settled, the batch
# trained on again); every other point is in the full set (`pytest -m slow`).
BOUNDED = {"ingest-dvc-added", "run-version-created"}

NEW_BATCH = "demo-2-gadgets"  # what the ingest scenario ingests
NOISED = "demo-4-noised"  # what the withdraw scenario's cycle rejects


def _case(point: KillPoint):
    marks = [pytest.mark.slow] + ([] if point.name in BOUNDED else [pytest.mark.exhaustive])
    return pytest.param(point, marks=marks, id=point.name)


def _env(prefect_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    # One Prefect home for every victim: its database is migrated once, not in every case.
    env.update({"PYTHONPATH": str(REPO), "PREFECT_HOME": str(prefect_home), "HF_HUB_OFFLINE": "1"})
    return env


def _kaizen(args: list[str], env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def _victim(point: KillPoint, args: list[str], env: dict[str, str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "tests.reliability.killpoint", point.target, str(point.nth), point.when, "--"]
    # Its own session: the kill takes the command's process group (Prefect's server with it).
    return subprocess.Popen(
        command + args, env=env, cwd=REPO, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def _checked(result: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"{what} exited {result.returncode}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    return result


class Workspaces:
    """Prepared workspaces, built once through the CLI and restored for each case at one path."""

    def __init__(self, root: Path, demo_files: dict[str, Path]):
        self.root, self.files, self.live = root, demo_files, root / "ws"
        self.env = _env(root / "prefect")
        self.saved: dict[str, Path] = {}

    def kaizen(self, *args: str) -> subprocess.CompletedProcess:
        return _kaizen([*args, "--workspace", str(self.live)], self.env)

    def prepare(self, scenario: str) -> Path:
        if scenario not in self.saved:
            self._build(scenario)
            shutil.copytree(self.live, self.root / scenario, symlinks=True)
            self.saved[scenario] = self.root / scenario
        shutil.rmtree(self.live, ignore_errors=True)
        shutil.copytree(self.saved[scenario], self.live, symlinks=True)
        return self.live

    def _build(self, scenario: str) -> None:
        """ingest: an empty workspace; bootstrap: one batch, no model; withdraw: a champion and a
        noised batch its next cycle rejects."""
        if scenario == "ingest":
            shutil.rmtree(self.live, ignore_errors=True)
            self.live.mkdir(parents=True)
            (self.live / "kaizen.yaml").write_text(yaml.safe_dump(TINY_CONFIG))
            _checked(self.kaizen("init"), "kaizen init")
            return
        self.prepare("ingest" if scenario == "bootstrap" else "bootstrap")
        if scenario == "bootstrap":
            _checked(self.kaizen("ingest", str(self.files["demo-1-restaurants"])), "kaizen ingest")
            return
        _checked(self.kaizen("run"), "kaizen run")
        _checked(self.kaizen("ingest", str(self.files[NOISED])), "kaizen ingest")

    def command(self, scenario: str) -> list[str]:
        args = ["ingest", str(self.files[NEW_BATCH])] if scenario == "ingest" else ["run"]
        return [*args, "--workspace", str(self.live)]


@pytest.fixture(scope="module")
def workspaces(tmp_path_factory, demo_files) -> Workspaces:
    return Workspaces(tmp_path_factory.mktemp("kill"), demo_files)


def _doctor(ws: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return _kaizen(["doctor", "--workspace", str(ws)], env)


def _state(ws: Path, env: dict[str, str]) -> dict:
    status = json.loads(_checked(_kaizen(["status", "--json", "--workspace", str(ws)], env), "status").stdout)
    manifest = (
        json.loads((ws / "data" / "manifest.json").read_text()) if (ws / "data" / "manifest.json").exists() else []
    )
    quarantined = sorted(p.name for p in (ws / ".kaizen" / "quarantine").glob("*")) if (ws / ".kaizen").exists() else []
    return {"status": status, "manifest": manifest, "quarantined": quarantined}


def _check_converged(scenario: str, ws: Path, env: dict[str, str], files: dict[str, Path]) -> None:
    doctor = _doctor(ws, env)
    assert doctor.returncode == 0, f"kaizen doctor disagrees:\n{doctor.stdout}{doctor.stderr[-2000:]}"
    state = _state(ws, env)
    sources = [Path(e["source"]).name for e in state["manifest"]]
    assert len(sources) == len(set(sources)), f"a batch was ingested twice: {sources}"
    champion = state["status"].get("champion") or {}
    if scenario == "ingest":
        assert f"{NEW_BATCH}.csv" in sources
    elif scenario == "bootstrap":
        assert champion.get("version") is not None, state["status"]
    else:  # the noised batch's challenger was rejected: the batch left data/ for quarantine
        assert f"{NOISED}.csv" not in sources and any(q for q in state["quarantined"]), state
        assert champion.get("version") == "1", state["status"]


@pytest.mark.parametrize("point", [_case(p) for p in POINTS])
def test_a_command_killed_at_each_step_converges(point: KillPoint, workspaces: Workspaces):
    ws = workspaces.prepare(point.scenario)
    args = workspaces.command(point.scenario)
    victim = _victim(point, args, workspaces.env)
    out, _ = victim.communicate(timeout=600)
    assert victim.returncode == -signal.SIGKILL, (
        f"{point.target} (call {point.nth}) was never reached: exit {victim.returncode}\n{out.decode()[-3000:]}"
    )
    _checked(_kaizen(args, workspaces.env), f"kaizen {' '.join(args[:1])} after the kill at {point.name}")
    _check_converged(point.scenario, ws, workspaces.env, workspaces.files)


@pytest.mark.slow
@pytest.mark.exhaustive
@pytest.mark.parametrize("scenario", ["ingest", "bootstrap", "withdraw"])
def test_a_command_killed_at_a_random_moment_converges(scenario: str, workspaces: Workspaces):
    seed = int(os.environ.get("KAIZEN_KILL_SEED") or time.time_ns() % 10**6)
    delay = random.Random(f"{seed}-{scenario}").uniform(3.0, 25.0)
    ws = workspaces.prepare(scenario)
    args = workspaces.command(scenario)
    victim = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", *args], env=workspaces.env, cwd=REPO, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        victim.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
    _checked(_kaizen(args, workspaces.env), f"kaizen {args[0]} after a kill at {delay:.1f}s (KAIZEN_KILL_SEED={seed})")
    _check_converged(scenario, ws, workspaces.env, workspaces.files)
