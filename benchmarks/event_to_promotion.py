"""Event to promotion: how long after `kaizen submit FILE` the champion alias names the model
trained on it (or the cycle's verdict), with `kaizen serve` running (its own Prefect server, the event trigger, the
ingest and the cycle deployments, each flow run a process of its own).

    .venv/bin/python benchmarks/event_to_promotion.py                 # tiny encoder and MiniLM
    .venv/bin/python benchmarks/event_to_promotion.py --model tiny

For each model: a fresh workspace, `kaizen serve` started and ready, a first batch submitted
and timed until it is champion (bootstrap), then a second, shifted batch submitted and timed
until its challenger is champion. Printed per stage: submit returned, batch ingested, cycle
started, champion moved.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, machine

sys.path.insert(0, str(ROOT))
from tests.conftest import TINY_CONFIG  # noqa: E402

SCHEDULE = {"poll_seconds": 5, "settle_seconds": 1, "min_new_rows": 1}


def config_for(model: str) -> dict:
    if model == "tiny":
        config = copy.deepcopy(TINY_CONFIG)
    else:  # the shipped defaults: MiniLM-L6, 3 epochs, the evidence gate
        config = {"project": "bench", "labels": ["negative", "positive"], "data": {"slice_columns": ["domain"]}}
    config["schedule"] = SCHEDULE
    return config


def kaizen(ws: Path, *argv: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", *argv, "--workspace", str(ws)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def batches(ws: Path) -> int:
    path = ws / "data" / "manifest.json"
    return len(json.loads(path.read_text())) if path.exists() else 0


def last_run(ws: Path) -> dict:
    path = ws / ".kaizen" / "last_run.json"
    return json.loads(path.read_text()) if path.exists() else {}


def time_one(ws: Path, file: Path, log: Path) -> tuple[dict[str, float], str]:
    """Seconds from submit to: submit returned, batch ingested, its cycle finished; and how the
    cycle ended (promoted, or what the gate said)."""
    before, count = last_run(ws).get("finished_at"), batches(ws)
    started = time.perf_counter()
    kaizen(ws, "submit", str(file))
    marks = {"submit returned": time.perf_counter() - started}
    while batches(ws) == count:
        time.sleep(0.5)
    marks["batch ingested"] = time.perf_counter() - started
    while True:
        done = last_run(ws)
        if done.get("finished_at") != before and done.get("status") not in (None, "nothing-to-do"):
            break
        if time.perf_counter() - started > 1800:
            raise SystemExit(f"no cycle finished within 30 minutes; see {log}")
        time.sleep(0.5)
    marks["cycle finished"] = time.perf_counter() - started
    return marks, done["status"]


def run(model: str, rows: int) -> list[tuple[str, tuple[dict[str, float], str]]]:
    import yaml

    from tasks.demo_data import write_demo_batches
    from tests.conftest import make_workspace

    root = Path(tempfile.mkdtemp(prefix=f"kaizen-e2p-{model}-"))
    ws = make_workspace(root / "ws", config_for(model))
    (ws / "kaizen.yaml").write_text(yaml.safe_dump(config_for(model)))
    files = {b: p for b, p, _ in write_demo_batches(root / "in", rows=rows)}
    log = root / "serve.log"
    with open(log, "wb") as out:
        serve = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "serve", "--workspace", str(ws)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        while "ready; Ctrl-C stops" not in log.read_text():
            if serve.poll() is not None:
                raise SystemExit(f"kaizen serve exited; see {log}")
            time.sleep(0.5)
        first = time_one(ws, files["demo-1-restaurants"], log)
        second = time_one(ws, files["demo-2-gadgets"], log)
    finally:
        os.killpg(serve.pid, signal.SIGINT)
        serve.wait(timeout=120)
    return [("first batch (bootstrap)", first), ("shifted batch (promotion)", second)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny", "minilm", "both"], default="both")
    parser.add_argument("--rows", type=int, default=600, help="rows per demo batch")
    args = parser.parse_args()
    print(f"machine: {machine()}; demo batches of {args.rows} rows")
    models = ["tiny", "minilm"] if args.model == "both" else [args.model]
    for model in models:
        for what, (marks, outcome) in run(model, args.rows):
            cols = "  ".join(f"{k} {v:6.1f} s" for k, v in marks.items())
            print(f"{model:<7} {what:<27} {cols}  -> {outcome}", flush=True)


if __name__ == "__main__":
    main()
