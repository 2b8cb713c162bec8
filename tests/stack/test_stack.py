"""Scaled out for real: hosts that share nothing but one stack (`kaizen stack up` on loopback).

The tests run in file order. The first one kills the stack's worker in the middle of a cycle and
the last one checks what followed: Prefect's zombie detection needs two missed 30-second
heartbeats, so the wait overlaps with the other tests instead of adding to them. The promotion
race and the twenty ingests run in the background from the start for the same reason: most of
every test here is waiting on a lock, a server or a subprocess's imports.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.stack.conftest import WORKER_PROJECT, ZOMBIE_AFTER_S, sst2_files

pytestmark = pytest.mark.timeout(600)
KILLED: dict = {}  # what the first test left for the last one


def api(stack, path: str, body: dict | None = None):
    url = stack.env["PREFECT_API_URL"] + path
    answer = httpx.post(url, json=body, timeout=20) if body is not None else httpx.get(url, timeout=20)
    answer.raise_for_status()
    return answer.json()


def run_deployment(stack) -> str:
    deployment = api(stack, "/deployments/name/continual_training/continual-training")
    return api(stack, f"/deployments/{deployment['id']}/create_flow_run", {})["id"]


def run_state(stack, run_id: str) -> str:
    return api(stack, f"/flow_runs/{run_id}")["state"]["type"]


def wait_for(check, what: str, timeout: float, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def md5_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.md5(p.read_bytes(), usedforsecurity=False).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def background(make_host, tmp_path_factory):
    """The promotion race and the twenty ingests start with this file and run while the other
    tests' cycles do (they share nothing with them but the servers); their tests wait for them
    and check what they left. The MLflow restart comes after both have finished."""
    from concurrent.futures import ThreadPoolExecutor

    racers = make_host("R1", "stack-race"), make_host("R2", "stack-race"), tmp_path_factory.mktemp("race")
    ingesters = make_host("I1", "stack-ingest"), make_host("I2", "stack-ingest"), tmp_path_factory.mktemp("ingest")
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield {
            "race": pool.submit(race_between_two_hosts, *racers),
            "ingest": pool.submit(ingest_from_two_hosts, *ingesters),
        }


def test_worker_killed_during_a_cycle(stack, make_host, demo_files, background):
    """A cycle runs on the stack's worker (from its empty workspace); kill -9 the worker and its
    flow run while training. What follows is checked by the last test of this file."""
    host = make_host("W", WORKER_PROJECT)
    host.kaizen("ingest", str(demo_files["demo-1-restaurants"]))
    run_id = run_deployment(stack)
    wait_for(lambda: run_state(stack, run_id) == "RUNNING", "the worker to start the cycle", 120)
    worker_log = Path(stack.record()["services"]["worker"]["log"])
    wait_for(lambda: "train: step" in worker_log.read_text(errors="replace"), "training to start", 180, 0.2)
    os.killpg(int(stack.record()["services"]["worker"]["pid"]), signal.SIGKILL)
    KILLED.update(run_id=run_id, host=host, at=time.monotonic())
    assert run_state(stack, run_id) == "RUNNING"  # nobody has told the server yet


def test_a_second_host_continues_from_the_first(stack, make_host, demo_files, tmp_path):
    """Cycle 1 on host A; cycle 2 on host B from an empty directory: warm start from A's
    champion, replay of A's batch, regression judged on it; B restores exactly A's data."""
    from tasks.lineage import Lineage

    a, b = make_host("A", "stack-two-hosts"), make_host("B", "stack-two-hosts")
    first = promoted_version(a.kaizen("run", str(demo_files["demo-1-restaurants"])).stdout)
    assert not (b.root / "data").exists()
    second = promoted_version(b.kaizen("run", str(demo_files["demo-2-gadgets"])).stdout)

    tags, metrics = registry_record(stack, "stack-two-hosts-clf", str(second))
    v2 = Lineage.from_tags(tags)
    batch_a = json.loads((a.root / "data" / "manifest.json").read_text())[0]["batch_id"]
    assert v2.parent_version == str(first) and v2.batch_ids[0] == batch_a and v2.new_batches != [batch_a]
    assert v2.replayed_rows > 0
    assert metrics["regression.challenger.accuracy"] >= 0.75  # judged on A's batch's test split

    # v1's data, restored on B from the shared remote, is byte for byte what A trained on.
    b.kaizen("lineage", str(first), "--checkout", str(tmp_path / "v1"))
    assert md5_tree(tmp_path / "v1" / "data") == md5_tree(a.root / "data")


def promoted_version(output: str) -> str:
    """The version a `kaizen run` made champion, from its last line ("cycle: promoted, v2; champion v2")."""
    import re

    found = re.search(r"cycle: promoted, v(\d+)", output)
    assert found, output
    return found.group(1)


def registry_record(stack, model: str, version: str) -> tuple[dict, dict]:
    """A version's tags and its cycle run's metrics, read from the MLflow server as any client would."""
    from mlflow import MlflowClient

    # Both URIs: an earlier test in this process may have set a global registry URI.
    uri = stack.env["KAIZEN_REGISTRY__TRACKING_URI"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    mv = client.get_model_version(model, version)
    return dict(mv.tags), client.get_run(mv.run_id).data.metrics


def race_between_two_hosts(one, two, tmp_path: Path) -> tuple[list[dict], list[dict], dict]:
    """50 rounds from each host at once: the attempts, the ledger and the final status."""
    versions = json.loads(one.python("-m", "tests.stack.race", "setup", "3").stdout.strip().splitlines()[-1])
    assert versions == ["1", "2", "3"]
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    logs = {h.name: tmp_path / f"{h.name}.json" for h in (one, two)}
    racers = [
        h.popen("-m", "tests.stack.race", "50", str(barrier), str(logs[h.name]), log=tmp_path / h.name)
        for h in (one, two)
    ]
    for racer in racers:
        assert racer.wait(timeout=300) == 0, (tmp_path / "R1").read_text()[-3000:] + (tmp_path / "R2").read_text()[
            -3000:
        ]
    attempts = [a for h in (one, two) for a in json.loads(logs[h.name].read_text())]
    ledger = json.loads(one.kaizen("history", "--json").stdout)
    return attempts, ledger, json.loads(one.kaizen("status", "--json").stdout)


def test_promotion_race_between_two_hosts(background):
    """50 rounds from each host at once, each expecting the champion it read: every move is in
    the ledger from the champion it replaced, the ledger is one unbroken chain, nothing is lost."""
    attempts, ledger, status = background["race"].result(timeout=600)
    moved = [a for a in attempts if a["moved"]]
    moves = [e for e in ledger if e["action"] == "manual-promote"]
    assert len(attempts) == 100 and 0 < len(moved) < 100
    # Rounds where both hosts read the same champion and tried to replace it at the same time
    # (their read-to-answer windows overlap; a champion read again after a full turn of the
    # versions is no collision): at most one won.
    by_round = {}
    for attempt in attempts:
        by_round.setdefault(attempt["round"], []).append(attempt)
    collisions = [
        (a, b)
        for a, b in by_round.values()
        if a["expected"] == b["expected"] and a["read_at"] < b["done_at"] and b["read_at"] < a["done_at"]
    ]
    assert collisions and all(a["moved"] + b["moved"] <= 1 for a, b in collisions)
    assert any(a["moved"] + b["moved"] == 1 for a, b in collisions)
    assert len(moves) == len(moved)  # zero lost updates: every move is recorded, nothing else
    by_why = {e["why"]: e for e in moves}
    for attempt in moved:  # each compared against exactly the champion it replaced
        entry = by_why[attempt["why"]]
        assert (entry["from_version"], entry["to_version"]) == (attempt["expected"], attempt["to"])
    for before, after in zip(moves, moves[1:], strict=False):  # one unbroken chain
        assert after["from_version"] == before["to_version"]
    assert [e["seq"] for e in ledger] == list(range(1, len(ledger) + 1))
    assert str(status["champion"]["version"]) == moves[-1]["to_version"]
    print(
        f"race: 100 attempts, {len(collisions)} rounds both hosts raced for one champion, {len(moved)} moves, 0 lost updates"
    )


def ingest_from_two_hosts(one, two, tmp_path: Path) -> tuple[list[Path], Path]:
    """10 files from each host at the same time, one of them corrupt; each host's log names what it refused."""
    files = sst2_files(tmp_path / "files", 20, 40)
    corrupt = tmp_path / "corrupt.csv"
    corrupt.write_text("text,label\n" + "".join(f"unlabelled sentence number {i},neutral\n" for i in range(40)))
    start_at = time.time() + 8
    jobs = [
        one.popen("-m", "tests.stack.ingest_many", str(start_at), *map(str, files[:10]), log=tmp_path / "I1.log"),
        two.popen(
            "-m", "tests.stack.ingest_many", str(start_at), *map(str, [*files[10:], corrupt]), log=tmp_path / "I2.log"
        ),
    ]
    for job, name in zip(jobs, ("I1", "I2"), strict=True):
        assert job.wait(timeout=500) == 0, (tmp_path / f"{name}.log").read_text()[-5000:]
    return files, corrupt


def test_twenty_files_ingested_at_once_from_two_hosts(stack, make_host, background, tmp_path):
    """10 files from each host at the same time: 20 data heads, one batch each, and a third host
    finds every batch exactly once; a file refused on B leaves its quarantine entry in S3."""
    files, corrupt = background["ingest"].result(timeout=600)
    logs = corrupt.parent
    refused = [
        json.loads(line.split(" ", 1)[1])
        for line in (logs / "I2.log").read_text().splitlines()
        if line.startswith("refused: ")
    ]
    assert refused == [[str(corrupt)]]  # and nothing else, on either host
    assert "refused: []" in (logs / "I1.log").read_text()

    third = make_host("I3", "stack-ingest")
    heads = head_rows(stack, "stack-ingest")
    assert [seq for seq, _ in heads] == list(range(1, 21)) and len({md5 for _, md5 in heads}) == 20
    third.kaizen("sync")
    manifest = json.loads((third.root / "data" / "manifest.json").read_text())
    assert sorted(Path(e["source"]).name for e in manifest) == sorted(f.name for f in files)
    assert len({e["batch_id"] for e in manifest}) == 20
    assert third.kaizen("doctor").returncode == 0

    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=stack.env["KAIZEN_DATA__REMOTE__ENDPOINT_URL"],
        aws_access_key_id=stack.env.get("AWS_ACCESS_KEY_ID", os.environ.get("AWS_ACCESS_KEY_ID")),
        aws_secret_access_key=stack.env.get("AWS_SECRET_ACCESS_KEY", os.environ.get("AWS_SECRET_ACCESS_KEY")),
        region_name="us-east-1",
    )
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="kaizen", Prefix="data/quarantine/").get("Contents", [])]
    assert any(k.endswith("report.json") for k in keys) and any(k.endswith(".parquet") for k in keys), keys


def head_rows(stack, project: str) -> list[tuple[int, str]]:
    import psycopg2

    with psycopg2.connect(stack.env["KAIZEN_SHARED__DATABASE_URL"]) as conn, conn.cursor() as cur:
        cur.execute("SELECT seq, data_md5 FROM kaizen_data_head WHERE project = %s ORDER BY seq", (project,))
        return cur.fetchall()


def test_mlflow_server_restarted_while_a_cycle_registers(stack, make_host, demo_files, tmp_path):
    """The tracking server goes away for a few seconds right after the gate: the cycle retries
    and converges (or a re-run does), and no aliased version lacks its verified weights."""
    from tasks.stack import restart
    from tasks.workspace import Workspace

    host = make_host("M", "stack-mlflow")
    log = tmp_path / "run.log"
    cycle = host.popen("-m", "flows.cli", "run", str(demo_files["demo-1-restaurants"]), log=log)
    wait_for(lambda: "gate: pass" in log.read_text(errors="replace") or cycle.poll() is not None, "the gate", 300, 0.1)
    restart(Workspace.at(stack.root), "mlflow", down_seconds=3)
    if cycle.wait(timeout=300) != 0:  # the retries ran out: the next command finishes the job
        assert "kaizen: error" in log.read_text(errors="replace")
        print("mlflow restart: the cycle failed; a re-run converged:", host.kaizen("run").stdout.strip())
    else:
        print("mlflow restart: the cycle retried and completed:", log.read_text().strip().splitlines()[-1])
    assert host.kaizen("doctor").returncode == 0  # every version's weights re-hashed, aliases listed
    assert host.kaizen("predict", "the food was great").stdout.split("\t")[0] in ("positive", "negative")


def test_the_killed_run_ends_crashed_and_the_next_run_completes(stack, tmp_path):
    """Zombie detection marks the killed run Crashed, which frees the deployment's concurrency
    slot; a new worker then runs the next cycle, which trains the batch and promotes."""
    import sys

    from tests.conftest import REPO

    assert KILLED, "the first test of this file did not run"
    run_id, host = KILLED["run_id"], KILLED["host"]
    wait_for(lambda: run_state(stack, run_id) == "CRASHED", "the killed run to be Crashed", ZOMBIE_AFTER_S + 120, 2)
    worker_ws = stack.root / ".kaizen" / "stack" / "worker-workspace"
    env = {**host.env, "KAIZEN_WORKSPACE": str(worker_ws), "PREFECT_WORKER_QUERY_SECONDS": "2"}
    with open(tmp_path / "worker.log", "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "stack", "worker"], cwd=REPO, env=env, stdout=out, stderr=out,
            start_new_session=True,
        )  # fmt: skip
    try:
        next_run = run_deployment(stack)
        final = wait_for(
            lambda: (s := run_state(stack, next_run)) in ("COMPLETED", "FAILED", "CRASHED") and s, "the next run", 300
        )
        assert final == "COMPLETED", (tmp_path / "worker.log").read_text()[-5000:]
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:  # still shutting down on a loaded machine
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=30)
    assert json.loads(host.kaizen("status", "--json").stdout)["champion"]["version"] is not None
