"""`kaizen serve` as a user runs it: a real Prefect server, the inbox watcher, the event-triggered
ingest and the cycle deployment with its concurrency limit; then `kill -9` during a cycle and a
restart. Everything through the CLI in subprocesses; state read back through `kaizen status`,
the manifest, the Prefect API and `kaizen doctor`."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.conftest import LATENCY_RULE_OFF, REPO, make_workspace, tiny_config

# Each cycle holds the workspace, so the second file's ingest waits for the first file's cycle,
# and its own cycle comes after: on a 2-core machine that another pytest worker keeps busy, one
# cycle took 3 minutes and the two files 7 (the waits below once ran out at 400 s).
pytestmark = pytest.mark.timeout(1500)
SETTLE_S = 720

READY = "ready; Ctrl-C stops"
# Each inbox check is a flow run in a process of its own (imports and all, ~5 CPU-seconds); every
# 10 s rather than 5 halves what the watcher burns beside the cycles this test waits for.
SCHEDULE = {"poll_seconds": 10, "settle_seconds": 1, "min_new_rows": 1}


def kaizen_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return {**env, "KAIZEN_USER": "pytest", **extra}


def kaizen(ws: Path, *argv: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", *argv, "--workspace", str(ws)],
        cwd=REPO,
        env=kaizen_env(**env),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check:
        assert done.returncode == 0, f"kaizen {' '.join(argv)} -> {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def wait_until(ready: Callable[[], object], what: str, timeout: float, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        time.sleep(1)
    tail = log.read_text(errors="replace")[-6000:] if log and log.exists() else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{tail}")


class Serve:
    """`kaizen serve` in a session of its own, so a kill reaches it and everything it started."""

    def __init__(self, ws: Path, log: Path):
        self.ws, self.log = ws, log
        ready_before = log.read_text().count(READY) if log.exists() else 0
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "flows.cli", "serve", "--workspace", str(ws)],
                cwd=REPO,
                env=kaizen_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(self.api_url, "kaizen serve to start its Prefect server", 180, log)
        # Deployments (and the event trigger) exist once it says so; an event sent before is lost.
        wait_until(lambda: log.read_text().count(READY) > ready_before, "kaizen serve to be ready", 120, log)

    def api_url(self) -> str | None:
        record = self.ws / ".kaizen" / "serve.json"
        if self.process.poll() is not None:
            raise AssertionError(f"kaizen serve exited with {self.process.returncode}\n{self.log.read_text()[-4000:]}")
        if not record.exists():
            return None
        written = json.loads(record.read_text())  # a killed serve's record names a dead server
        return written["api_url"] if written["serve_pid"] == self.process.pid else None

    def kill_everything(self) -> None:
        """SIGKILL serve, its Prefect server and every flow run it started (a lost machine)."""
        family = [self.process.pid] + [p.pid for p in psutil.Process(self.process.pid).children(recursive=True)]
        for pid in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill_everything()


def flow_runs(api_url: str, flow_name: str) -> list[dict]:
    import httpx

    runs = httpx.post(f"{api_url}/flow_runs/filter", json={"limit": 200}, timeout=10).json()
    flows = {f["id"]: f["name"] for f in httpx.post(f"{api_url}/flows/filter", json={}, timeout=10).json()}
    return [r for r in runs if flows.get(r["flow_id"]) == flow_name]


def manifest(ws: Path) -> list[dict]:
    path = ws / "data" / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else []


def status(ws: Path) -> dict:
    return json.loads(kaizen(ws, "status", "--json").stdout)


def inbox_files(ws: Path) -> list[str]:
    return sorted(p.name for p in (ws / "inbox").glob("*")) if (ws / "inbox").exists() else []


def settled(ws: Path, api_url: str, batches: int) -> bool:
    """`batches` ingested, inbox empty, no cycle or ingest queued or running."""
    if len(manifest(ws)) != batches or inbox_files(ws):
        return False
    active = {"SCHEDULED", "PENDING", "RUNNING", "PAUSED"}
    busy = [
        r
        for name in ("continual_training", "ingest-landed")
        for r in flow_runs(api_url, name)
        if r["state_type"] in active
    ]
    return not busy


def test_serve_ingests_each_dropped_file_once_cycles_never_overlap_and_survive_kill_9(demo_files, tmp_path):
    from tasks.demo_data import RESTAURANT, make_domain_batch

    config = tiny_config(**LATENCY_RULE_OFF) | {"schedule": SCHEDULE}
    ws = make_workspace(tmp_path / "ws", config)
    log = tmp_path / "serve.log"
    serve = Serve(ws, log)
    try:
        api = serve.api_url()
        # Two files land: one through `kaizen submit` (event), one copied in (the watcher).
        kaizen(ws, "submit", str(demo_files["demo-1-restaurants"]))
        (ws / "inbox").mkdir(exist_ok=True)
        shutil.copy(demo_files["demo-2-gadgets"], ws / "inbox" / "demo-2-gadgets.csv")
        # A file that fails validation: quarantined as by `kaizen ingest`, and out of the inbox.
        shutil.copy(demo_files["demo-3-corrupt"], ws / "inbox" / "demo-3-corrupt.csv")
        wait_until(
            lambda: settled(ws, api, 2) and status(ws)["champion"], "both files ingested and trained", SETTLE_S, log
        )
        sources = [Path(e["source"]).name for e in manifest(ws)]
        assert sorted(sources) == ["demo-1-restaurants.csv", "demo-2-gadgets.csv"], sources
        assert len(status(ws)["quarantined"]) == 1, status(ws)["quarantined"]

        cycles = [r for r in flow_runs(api, "continual_training") if r["state_type"] == "COMPLETED"]
        assert cycles, "no cycle ran"
        spans = sorted((r["start_time"], r["end_time"]) for r in cycles)
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            assert start >= end, f"two cycles of one workspace overlapped: {spans}"
        trained = status(ws)
        assert trained["last_run"]["status"] != "failed", trained
        versions_before = trained["champion"]["version"]

        # The first file again: its content is already a batch, so it is skipped and leaves the inbox.
        shutil.copy(demo_files["demo-1-restaurants"], ws / "inbox" / "again.csv")
        wait_until(lambda: not inbox_files(ws), "the re-sent file to leave the inbox", 120, log)
        wait_until(lambda: settled(ws, api, 2), "the re-sent file's ingest to finish", 120, log)
        assert len(manifest(ws)) == 2
        assert "skipped" in log.read_text(), "the re-sent file was not reported as skipped"

        # A new batch, and kill -9 of everything while its cycle runs.
        fresh = tmp_path / "fresh.csv"
        make_domain_batch(RESTAURANT, "restaurants", 300, 77).to_csv(fresh, index=False)
        kaizen(ws, "submit", str(fresh))
        running = wait_until(
            lambda: [r for r in flow_runs(api, "continual_training") if r["state_type"] == "RUNNING"],
            "the new batch's cycle to start",
            240,
            log,
        )
        time.sleep(3)
        serve.kill_everything()
        serve = Serve(ws, log)
        api = serve.api_url()

        def killed_state() -> str | None:
            state = {r["id"]: r["state_type"] for r in flow_runs(api, "continual_training")}[running[0]["id"]]
            return None if state == "RUNNING" else state

        assert wait_until(killed_state, "the killed cycle to be settled", 120, log) in ("CRASHED", "COMPLETED")
        # The restarted serve starts the cycle the kill cut short (its rows still wait untrained).
        wait_until(
            lambda: settled(ws, api, 3) and status(ws)["last_run"]["status"] != "failed" and untrained(ws) == [],
            "the next cycle to train the batch the killed one did not finish",
            SETTLE_S,
            log,
        )
    finally:
        serve.stop()

    assert len(manifest(ws)) == 3, manifest(ws)
    assert len({e["sha256"] for e in manifest(ws)}) == 3
    doctor = kaizen(ws, "doctor", check=False)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert int(status(ws)["champion"]["version"]) >= int(versions_before)


def untrained(ws: Path) -> list[str]:
    from tasks.context import Context
    from tasks.cycle import plan_cycle

    return plan_cycle(Context.open(ws)).new_batches
