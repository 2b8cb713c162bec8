"""`gate.approval: manual` end to end: a challenger that passes its gate waits in a paused flow
run; `kaizen approve` promotes it, `kaizen reject` leaves the champion, approving after the
champion moved is refused with the reason, and no decision within the timeout rejects it.
Real Prefect server (loopback), the CLI in subprocesses, MLflow's ledger read back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import LATENCY_RULE_OFF, REPO, make_workspace, tiny_config
from tests.flows.test_unattended import kaizen_env, wait_until

pytestmark = pytest.mark.timeout(900)


@pytest.fixture
def server_env(tmp_path):
    from tasks import prefect_server
    from tasks.workspace import Workspace

    proc, url = prefect_server.start(Workspace.at(tmp_path / "prefect-server"))
    yield kaizen_env(PREFECT_API_URL=url)
    proc.terminate()
    proc.wait(timeout=30)


def cli(env: dict, ws: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *argv, "--workspace", str(ws)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def start_cycle(env: dict, ws: Path, file: Path, *options: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "flows.cli", "run", str(file), "--workspace", str(ws), *options]
    return subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def waiting_version(ws: Path, run: subprocess.Popen) -> str:
    """The version the cycle waits with. Read in this process: a `kaizen status` a second would
    keep a core busy with its imports while the cycle it waits for trains on the other."""
    from tasks.approval import waiting
    from tasks.context import Context

    def waiting_now():
        if run.poll() is not None:
            raise AssertionError(f"the cycle ended instead of waiting:\n{run.stdout.read()}")
        found = waiting(Context.open(ws))
        return found[-1]["version"] if found else None

    return wait_until(waiting_now, "a challenger waiting for approval", 300)


def champion(env: dict, ws: Path) -> str | None:
    ref = json.loads(cli(env, ws, "status", "--json").stdout)["champion"]
    return ref["version"] if ref else None


def ledger(env: dict, ws: Path) -> list[dict]:
    return json.loads(cli(env, ws, "history", "--json").stdout)


def finish(run: subprocess.Popen) -> str:
    out, _ = run.communicate(timeout=300)
    assert run.returncode == 0, out
    return out


def test_manual_approval_approve_reject_stale_and_timeout(server_env, tmp_path):
    from tasks.demo_data import GADGET, RESTAURANT, make_domain_batch

    config = tiny_config(policy="no-harm", approval="manual", approval_timeout=600, **LATENCY_RULE_OFF)
    ws = make_workspace(tmp_path / "ws", config)
    files = {}
    for name, (template, domain, seed) in {
        "a": (RESTAURANT, "restaurants", 1),
        "b": (GADGET, "gadgets", 2),
        "c": (GADGET, "gadgets", 3),
    }.items():
        files[name] = tmp_path / f"{name}.csv"
        make_domain_batch(template, domain, 300, seed).to_csv(files[name], index=False)

    # Approve: the first challenger becomes champion, with the approver in the ledger.
    run = start_cycle(server_env, ws, files["a"])
    v1 = waiting_version(ws, run)
    assert champion(server_env, ws) is None
    approved = cli(server_env, ws, "approve", v1, "--reason", "looks right")
    assert approved.returncode == 0, approved.stdout + approved.stderr
    finish(run)
    assert champion(server_env, ws) == v1
    last = ledger(server_env, ws)[-1]
    assert last | {"when": None} == last | {
        "action": "approve",
        "to_version": v1,
        "who": "pytest",
        "why": "looks right",
        "when": None,
    }

    # Reject: the champion stays.
    run = start_cycle(server_env, ws, files["b"])
    v2 = waiting_version(ws, run)
    rejected = cli(server_env, ws, "reject", v2, "--reason", "not this week")
    assert rejected.returncode == 0, rejected.stdout + rejected.stderr
    finish(run)
    assert champion(server_env, ws) == v1
    last = ledger(server_env, ws)[-1]
    assert (last["action"], last["to_version"], last["who"], last["why"]) == ("reject", v2, "pytest", "not this week")

    # The champion moves while v3 waits: approving v3 is refused; then the timeout rejects it.
    run = start_cycle(server_env, ws, files["c"], "--set", "gate.approval_timeout=40")
    v3 = waiting_version(ws, run)
    moved = cli(server_env, ws, "promote", v2, "--reason", "chosen by hand")
    assert moved.returncode == 0, moved.stdout + moved.stderr
    stale = cli(server_env, ws, "approve", v3, "--reason", "too late")
    assert stale.returncode == 1, stale.stdout + stale.stderr
    assert f"compared it with v{v1}" in stale.stderr and f"champion is now v{v2}" in stale.stderr, stale.stderr
    finish(run)
    assert champion(server_env, ws) == v2
    last = ledger(server_env, ws)[-1]
    assert (last["action"], last["to_version"], last["who"]) == ("reject", v3, "kaizen (approval timeout)")
    assert json.loads(cli(server_env, ws, "status", "--json").stdout)["awaiting_approval"] == []
