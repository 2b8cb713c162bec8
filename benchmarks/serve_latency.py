"""Serving latency and throughput: `kaizen serve-model` against `mlflow models serve`, the same
registered version, side by side in one run.

    .venv/bin/python benchmarks/serve_latency.py [--workspace DIR] [--seconds 10]

Without --workspace it trains one MiniLM champion on 600 SST-2 training rows in a scratch
workspace (about two minutes on 2 cores). Each server runs as its own process on loopback and
is measured alone: p50/p95 latency of one SST-2 sentence per request (sequential), then
requests per second with 1, 8 and 32 concurrent clients each sending one sentence.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from common import ROOT, machine, sst2_frame

CLIENTS = (1, 8, 32)


class Connection(http.client.HTTPConnection):
    """Keep-alive with TCP_NODELAY, as urllib3 (requests) sets by default: without it, Nagle's
    algorithm meeting delayed ACKs adds ~40 ms to every request on a reused connection."""

    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def build_workspace(root: Path) -> Path:
    ws = root / "ws"
    ws.mkdir(parents=True)
    batch = root / "sst2-batch.csv"
    sst2_frame("train", rows=600, seed=1).assign(label=lambda f: f["label"].map({0: "negative", 1: "positive"})).to_csv(
        batch, index=False
    )
    # Serving speed does not depend on the gate's verdict: the version is promoted by hand.
    for argv in (
        ["init"],
        ["run", str(batch), "--set", "train.epochs=1"],
        ["promote", "1", "--force", "--reason", "benchmark"],
    ):
        subprocess.run([sys.executable, "-m", "flows.cli", *argv, "--workspace", str(ws)], cwd=ROOT, check=True)
    return ws


class Server:
    def __init__(self, name: str, command: list[str], env: dict[str, str], port: int | None, body, log: Path):
        self.name, self.body, self.log = name, body, log
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        self.port = port or self._announced_port()
        self.path = "/predict" if name.startswith("kaizen") else "/invocations"
        self._wait_ready()

    def _announced_port(self) -> int:
        for _ in range(600):
            found = re.search(r"on http://127\.0\.0\.1:(\d+)", self.log.read_text())
            if found:
                return int(found.group(1))
            time.sleep(0.2)
        raise SystemExit(f"{self.name} announced no port:\n{self.log.read_text()}")

    def _wait_ready(self) -> None:
        for _ in range(900):
            try:
                if self.post("a warm up sentence")[0] == 200:
                    return
            except OSError:
                pass
            if self.process.poll() is not None:
                raise SystemExit(f"{self.name} exited:\n{self.log.read_text()}")
            time.sleep(0.2)
        raise SystemExit(f"{self.name} never answered:\n{self.log.read_text()}")

    def post(self, text: str, conn: Connection | None = None) -> tuple[int, bytes]:
        own = conn is None
        conn = conn or Connection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request("POST", self.path, body=self.body(text), headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            if own:
                conn.close()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def latency_ms(server: Server, sentences: list[str], requests: int = 300) -> tuple[float, float]:
    conn = Connection("127.0.0.1", server.port, timeout=60)
    times = []
    for i in range(requests):
        started = time.perf_counter()
        status, _ = server.post(sentences[i % len(sentences)], conn)
        times.append((time.perf_counter() - started) * 1000)
        assert status == 200
    conn.close()
    return float(np.percentile(times, 50)), float(np.percentile(times, 95))


def throughput(server: Server, sentences: list[str], clients: int, seconds: float) -> tuple[float, int]:
    done, failed, stop = [0] * clients, [0] * clients, threading.Event()

    def client(k: int) -> None:
        conn = Connection("127.0.0.1", server.port, timeout=60)
        i = k
        while not stop.is_set():
            try:
                status, _ = server.post(sentences[i % len(sentences)], conn)
            except OSError:
                conn.close()
                conn = Connection("127.0.0.1", server.port, timeout=60)
                status = -1
            if status == 200:
                done[k] += 1
            else:
                failed[k] += 1
            i += clients
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - started), sum(failed)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workspace", type=Path)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="kaizen-serve-bench-"))
    ws = args.workspace.resolve() if args.workspace else build_workspace(scratch)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    # mlflow models serve execs `uvicorn` by name: the environment's bin directory must be on PATH.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{ws / '.kaizen' / 'mlflow.db'}"
    sentences = sst2_frame("validation")["text"].tolist()
    version = json.loads(
        subprocess.run(
            [sys.executable, "-m", "flows.cli", "status", "--json", "--workspace", str(ws)],
            cwd=ROOT, env=env, capture_output=True, text=True, check=True,
        ).stdout
    )["champion"]["version"]  # fmt: skip
    name = "kaizen-classifier"
    kaizen_cmd = [sys.executable, "-m", "flows.cli", "serve-model", "--port", "0", "--workspace", str(ws)]
    mlflow_cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{name}/{version}"]
    mlflow_cmd += ["--env-manager", "local", "--host", "127.0.0.1", "--port", "8931", "--workers", "1"]
    servers = {
        "kaizen serve-model": (kaizen_cmd, None, lambda t: json.dumps({"texts": [t]})),
        "mlflow models serve": (mlflow_cmd, 8931, lambda t: json.dumps({"dataframe_records": [{"text": t}]})),
    }
    results = {}
    for label, (command, port, body) in servers.items():
        server = Server(label, command, env, port, body, scratch / f"{label.split()[0]}.log")
        try:
            p50, p95 = latency_ms(server, sentences)
            rates = {c: throughput(server, sentences, c, args.seconds) for c in CLIENTS}
        finally:
            server.stop()
        results[label] = (p50, p95, rates)
    print(f"# serve_latency: MiniLM-L6 champion v{version}, one SST-2 sentence per request; {machine()}")
    header = "| server | p50 ms | p95 ms | " + " | ".join(f"req/s @{c}" for c in CLIENTS) + " | failed |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for label, (p50, p95, rates) in results.items():
        failed = sum(f for _, f in rates.values())
        cells = " | ".join(f"{r:.1f}" for r, _ in rates.values())
        print(f"| {label} | {p50:.1f} | {p95:.1f} | {cells} | {failed} |")
    ours, theirs = results["kaizen serve-model"][2], results["mlflow models serve"][2]
    print("throughput ratio kaizen/mlflow: " + ", ".join(f"@{c}: {ours[c][0] / theirs[c][0]:.2f}x" for c in CLIENTS))


if __name__ == "__main__":
    main()
