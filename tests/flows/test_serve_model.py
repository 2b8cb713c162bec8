"""`kaizen serve-model` as a real process on loopback, over a workspace with two versions.

The tests share one service and run in order; each leaves `champion` at v2 as it found it.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import LATENCY_RULE_OFF, REPO, make_workspace, tiny_config
from tests.flows.e2e import cli

RELOAD_S = 1.0
TEXTS = ["the food was wonderful", "terrible battery, died in a day", "meh", "ok ../ file:///etc/passwd"]


@pytest.fixture(scope="module")
def two_versions(prefect_harness, demo_files, tmp_path_factory) -> Path:
    ws = make_workspace(tmp_path_factory.mktemp("serve") / "ws", tiny_config(**LATENCY_RULE_OFF))
    for name in ("demo-1-restaurants", "demo-2-gadgets"):
        result = cli(["run", str(demo_files[name]), "--workspace", str(ws)])
        assert result.code == 0 and "promoted" in result.out, result.why()
    return ws


class Service:
    def __init__(self, ws: Path):
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        command = [sys.executable, "-m", "flows.cli", "serve-model", "--port", "0", "--workspace", str(ws)]
        command += ["--set", f"serve.reload_seconds={RELOAD_S}"]
        self.log_path = ws.parent / "serve.log"
        self.log = self.log_path.open("w+")
        self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.port = self._wait_for_port()
        self._wait_until(lambda: self.get("/health")[0] == 200, "the service to load the champion")

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            found = re.search(r"on http://127\.0\.0\.1:(\d+)", self.log_path.read_text())
            if found:
                return int(found.group(1))
            assert self.process.poll() is None, self.log_path.read_text()
            time.sleep(0.2)
        raise AssertionError(f"no port announced:\n{self.log_path.read_text()}")

    def _wait_until(self, ready, what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if ready():
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}:\n{self.log_path.read_text()}")

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {"Content-Type": "application/json"})
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw.decode(errors="replace")

    def get(self, path: str):
        return self.request("GET", path)

    def predict(self, texts: list[str]):
        return self.request("POST", "/predict", json.dumps({"texts": texts}).encode())

    def version(self) -> str:
        return self.get("/health")[1]["version"]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()


@pytest.fixture(scope="module")
def service(two_versions):
    running = Service(two_versions)
    yield running
    running.stop()


def champion_moves(ws: Path, *argv: str) -> None:
    result = cli([*argv, "--workspace", str(ws)])
    assert result.code == 0, result.why()


def test_predictions_are_those_of_kaizen_predict(service, two_versions):
    from tasks.context import Context
    from tasks.inference import predict_registered

    status, answer = service.predict(TEXTS)
    assert status == 200 and answer["version"] == service.version() == "2"
    version, frame = predict_registered(Context.open(two_versions), TEXTS)
    assert version == "2"
    for row, (_, expected) in zip(answer["predictions"], frame.iterrows(), strict=True):
        assert row["label"] == expected["label"] and row["version"] == "2"
        for label, p in row["probabilities"].items():
            assert p == pytest.approx(expected[f"p_{label}"], abs=1e-6)


def test_hostile_requests_get_4xx_and_the_service_keeps_serving(service):
    big_text = json.dumps({"texts": ["a" * (2 << 20)]}).encode()
    cases = {
        "oversized body": ("POST", "/predict", b"{" + b" " * (3 << 20) + b"}"),
        "10k texts": ("POST", "/predict", json.dumps({"texts": ["hi"] * 10_000}).encode()),
        "a 2 MB text": ("POST", "/predict", big_text),
        "a text over max_chars": ("POST", "/predict", json.dumps({"texts": ["a" * 20_000]}).encode()),
        "wrong types": ("POST", "/predict", json.dumps({"texts": [1, {"a": 2}]}).encode()),
        "bad JSON": ("POST", "/predict", b'{"texts": ['),
        "a model field": ("POST", "/predict", json.dumps({"texts": ["x"], "model": "../../etc"}).encode()),
        "a path field": ("POST", "/predict", json.dumps({"texts": ["x"], "path": "file:///etc/passwd"}).encode()),
        "dot-dot in the URL": ("GET", "/../../etc/passwd", None),
        "an unknown route": ("POST", "/admin/reload", b"{}"),
    }
    for what, (method, path, body) in cases.items():
        status, answer = service.request(method, path, body)
        assert 400 <= status < 500, (what, status, answer)
        assert service.get("/health")[0] == 200, f"the service stopped answering after {what}"
    assert service.request(*cases["oversized body"])[0] == 413
    assert service.request(*cases["10k texts"])[0] == 413
    status, answer = service.predict(["see ../../etc/passwd or file:///etc/shadow"])
    assert status == 200 and answer["predictions"][0]["label"] in ("negative", "positive")
    metrics = service.get("/metrics")[1]
    assert 'kaizen_requests_total{route="/predict",status="413"}' in metrics


def test_the_champion_is_followed_under_load_without_a_failed_request(service, two_versions):
    answers: list[tuple[float, float, int, str | None]] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                status, answer = service.predict(TEXTS[:2])
                version = answer.get("version") if status == 200 else None
            except OSError as exc:
                status, version = -1, str(exc)
            answers.append((started, time.monotonic(), status, version))

    threads = [threading.Thread(target=client) for _ in range(8)]
    begun = time.monotonic()
    for thread in threads:
        thread.start()
    moves = [(begun, "2")]
    for at, argv, to in ((4, ["rollback"], "1"), (11, ["promote", "2"], "2")):
        time.sleep(max(0.0, begun + at - time.monotonic()))
        champion_moves(two_versions, *argv, "--reason", "serve test")
        moves.append((time.monotonic(), to))
    time.sleep(max(0.0, begun + 20 - time.monotonic()))
    stop.set()
    for thread in threads:
        thread.join(timeout=60)

    failed = [a for a in answers if a[2] != 200]
    assert answers and not failed, failed[:5]
    for started, ended, _, version in answers:
        # The champion when the request started, or the one it had just replaced.
        current = max(i for i, (t, _) in enumerate(moves) if t <= started)
        allowed = {moves[current][1]} | ({moves[current - 1][1]} if current else set())
        if ended > moves[current][0] + RELOAD_S + 5:
            allowed = {moves[current][1]}  # by now the new champion must be answering
        assert version in allowed, (started - begun, version, moves)
    for (moved_at, to), (next_at, _) in zip(moves[1:], moves[2:] + [(begun + 20, None)], strict=True):
        served = [a for a in answers if moved_at + RELOAD_S + 5 < a[0] < next_at]
        assert served and all(a[3] == to for a in served)


def test_a_champion_that_fails_to_load_is_never_swapped_in(service, two_versions):
    from urllib.parse import urlparse

    from tasks.context import Context

    ctx = Context.open(two_versions)
    artifacts = Path(urlparse(ctx.client.get_model_version_download_uri(ctx.model_name, "1")).path)
    [weights] = list(artifacts.rglob("model.safetensors"))
    saved = weights.with_suffix(".saved")
    shutil.copy2(weights, saved)
    weights.chmod(0o644)
    weights.write_bytes(weights.read_bytes()[:-8] + b"tampered")
    try:
        champion_moves(two_versions, "rollback", "--reason", "v1 tampered")
        service._wait_until(lambda: "failed to load" in service.log_path.read_text(), "the failed load to be logged")
        status, answer = service.predict(TEXTS[:1])
        assert status == 200 and answer["version"] == "2" and service.version() == "2"
        assert re.search(r"kaizen_model_load_failures_total [1-9]", service.get("/metrics")[1])
    finally:
        shutil.copy2(saved, weights)
    service._wait_until(lambda: service.version() == "1", "v1 to be served once its weights are intact again", 30)
    champion_moves(two_versions, "promote", "2", "--reason", "back to v2")
    service._wait_until(lambda: service.version() == "2", "v2 to be served again", 30)
