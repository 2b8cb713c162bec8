"""`kaizen ingest` commands started at the same moment in a fresh `kaizen init` workspace.

Two such commands used to collide in Prefect's SQLite home (one died with a raw traceback); now the second
waits for the first, and both batches land, each exactly once, in data/, the manifest, DVC
and the remote."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import REPO, SHARED

pytestmark = pytest.mark.slow


def _kaizen(*args: str, cwd) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )


def _env() -> dict:
    import os

    return {**os.environ, "PYTHONPATH": str(REPO)}


def test_ingests_started_together_all_land_once(tmp_path):
    """Without the workspace lock, 4 at once crashed in Prefect's flow engine start-up (seen);
    two at once is the same race with fewer entrants, so 4 covers it."""
    commands = 4
    from tasks.ingest import read_manifest
    from tasks.versioning import data_version
    from tasks.workspace import Workspace

    ws_root = tmp_path / "ws"
    ws_root.mkdir()
    init = _kaizen("init", cwd=ws_root)
    assert init.wait(timeout=300) == 0, init.stderr.read()
    source = pd.read_csv(SHARED / "sst2" / "validation.csv").assign(
        label=lambda f: f["label"].map({0: "negative", 1: "positive"})
    )
    files = []
    for i in range(commands):
        part = source.iloc[120 * i : 120 * (i + 1)]
        files.append(tmp_path / f"part-{i}.csv")
        part.to_csv(files[-1], index=False)

    procs = [_kaizen("ingest", str(f), "--batch-id", f"b{i}", cwd=ws_root) for i, f in enumerate(files)]
    outcomes = [(p.wait(timeout=600), p.stdout.read(), p.stderr.read()) for p in procs]
    for code, _out, err in outcomes:
        assert code == 0, err[-2000:]
        assert "Traceback" not in err
    ws = Workspace.at(ws_root)
    expected = [f"b{i}" for i in range(commands)]
    assert sorted(e["batch_id"] for e in read_manifest(ws)) == expected
    assert sorted(p.name for p in ws.batches.iterdir()) == [f"{b}.parquet" for b in expected]
    status = subprocess.run(
        ["dvc", "status", "--cloud"],
        cwd=ws_root,
        capture_output=True,
        text=True,
        env={**_env(), "PATH": f"{REPO / '.venv' / 'bin'}:{_env().get('PATH', '')}"},
    )
    assert status.returncode == 0 and "are in sync" in status.stdout, status.stdout + status.stderr
    assert data_version(ws) is not None
    assert not (ws.state / "workspace.lock.owner").exists()


def test_a_command_waits_its_turn_and_writes_nothing_meanwhile(tmp_path):
    """While another command holds the workspace, `kaizen ingest` says so in one line, writes
    nothing, and completes once the workspace is free."""
    import os
    import time

    from tasks.ingest import read_manifest
    from tasks.workspace import Workspace, exclusive

    ws_root = tmp_path / "ws"
    ws_root.mkdir()
    assert _kaizen("init", cwd=ws_root).wait(timeout=300) == 0
    source = pd.read_csv(SHARED / "sst2" / "validation.csv").iloc[:120]
    source.assign(label=source["label"].map({0: "negative", 1: "positive"})).to_csv(tmp_path / "a.csv", index=False)
    ws = Workspace.at(ws_root)
    with exclusive(ws, "test holder", on_wait=print):
        proc = _kaizen("ingest", str(tmp_path / "a.csv"), "--batch-id", "a", cwd=ws_root)
        first_line = _first_stderr_line(proc, timeout=180)  # the command reached the lock and waits
        assert first_line == f"kaizen: waiting for `kaizen test holder` (pid {os.getpid()}) to finish in {ws.root}"
        time.sleep(2)
        assert proc.poll() is None  # still waiting
        assert read_manifest(ws) == [] and not ws.batch_path("a").exists()
    code, err = proc.wait(timeout=600), proc.stderr.read()
    assert code == 0, err[-2000:]
    assert "Traceback" not in err
    assert [e["batch_id"] for e in read_manifest(ws)] == ["a"]


def _first_stderr_line(proc: subprocess.Popen, timeout: float) -> str:
    import queue
    import threading

    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(proc.stderr.readline().rstrip("\n")), daemon=True).start()
    return lines.get(timeout=timeout)
