"""The Prefect server `kaizen serve` starts for a workspace when no `PREFECT_API_URL` is given.

Prefect's temporary in-process server (what one-off commands use) stops with its process and
runs no schedules or triggers; `kaizen serve` needs a server that does, so it starts
`prefect server start` on loopback with its state under `.kaizen/prefect`, and records it in
`.kaizen/serve.json` so other commands of the workspace (submit, approve, run) talk to it.
This module only starts and stops a process; it does not import prefect (only flows/ does).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from tasks.errors import KaizenError
from tasks.runtime import pid_alive, read_serve_record, serve_record
from tasks.workspace import Workspace

START_TIMEOUT_S = 120  # a new database is migrated first; ~20 s on a loaded 2-core machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def claim(ws: Workspace) -> None:
    """Refuse a second `kaizen serve` of one workspace; stop the server a killed one left."""
    record = read_serve_record(ws.state)
    if pid_alive(record.get("serve_pid")) and record.get("serve_pid") != os.getpid():
        raise KaizenError(f"`kaizen serve` already runs for {ws.root} (pid {record['serve_pid']})")
    if record.get("embedded") and pid_alive(record.get("server_pid")):
        _stop_pid(int(record["server_pid"]))
    serve_record(ws.state).unlink(missing_ok=True)


def start(ws: Workspace) -> tuple[subprocess.Popen, str]:
    """Start `prefect server start` on a free loopback port; returns the process and its API URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    log_path = ws.state / "prefect" / "server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(ws.state / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            # Its own session: Ctrl-C in the terminal reaches `kaizen serve`, which pauses its
            # schedules through this server and then stops it, instead of both stopping at once.
            start_new_session=True,
        )
    wait_healthy(url, proc, log_path)
    return proc, url


def wait_healthy(url: str, proc: subprocess.Popen, log_path: Path, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").splitlines()[-15:]
            raise KaizenError(f"the Prefect server exited with {proc.returncode}; {log_path}:\n" + "\n".join(tail))
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise KaizenError(f"the Prefect server did not answer at {url} within {timeout:.0f} s; see {log_path}")


def record(ws: Workspace, api_url: str, server: subprocess.Popen | None) -> None:
    serve_record(ws.state).write_text(
        json.dumps(
            {
                "api_url": api_url,
                "ui_url": api_url.removesuffix("/api"),
                "embedded": server is not None,
                "server_pid": server.pid if server else None,
                "serve_pid": os.getpid(),
                "started": datetime.now(UTC).isoformat(timespec="seconds"),
            },
            indent=1,
        )
    )


def stop(ws: Workspace, server: subprocess.Popen | None) -> None:
    if server is not None and server.poll() is None:
        _stop_pid(server.pid)
        server.wait(timeout=5)
    serve_record(ws.state).unlink(missing_ok=True)


def _stop_pid(pid: int, grace: float = 15) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.2)
        _reap(pid)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
        _reap(pid)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
