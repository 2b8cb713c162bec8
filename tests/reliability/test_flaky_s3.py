"""A flaky S3 endpoint (503 SlowDown, connections dropped before or after the work is done):
push and pull converge with bounded retries, pushed bytes are exact, and a push that never
gets through leaves no half-visible data version. tests/reliability/s3_faults.py sits in
front of moto's server on loopback."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import SHARED, TINY_CONFIG, make_workspace, tree_snapshot
from tests.reliability.s3_faults import FaultyS3Proxy
from tests.reliability.s3_server import TEST_KEYS, moto_s3

pytestmark = pytest.mark.usefixtures("prefect_harness")
BUCKET = "kaizen-data"
SHARE = 0.3  # the fault share a converging push/pull must survive
SEED = 20261124


def _bucket_head(method: str, path: str) -> bool:
    # check_remote's pre-flight HEAD has 2 attempts by design (fail fast on a misconfigured
    # remote, test_misconfigured_remote.py); the faults here target DVC's own transfers.
    return method == "HEAD" and path.split("?")[0].strip("/") == BUCKET


@pytest.fixture
def flaky_s3(monkeypatch) -> Iterator[tuple[FaultyS3Proxy, object]]:
    """(proxy in front of moto holding BUCKET, boto3 client talking to moto directly)."""
    for key, value in TEST_KEYS.items():
        monkeypatch.setenv(key, value)
    with (
        moto_s3(BUCKET) as (endpoint, client),
        FaultyS3Proxy(endpoint, share=SHARE, seed=SEED, spare=_bucket_head) as proxy,
    ):
        yield proxy, client


def _csv(tmp_path: Path, offset: int) -> Path:
    frame = pd.read_csv(SHARED / "sst2" / "validation.csv", dtype=str, keep_default_na=False).iloc[
        offset : offset + 200
    ]
    path = tmp_path / f"batch-{offset}.csv"
    frame.assign(label=frame["label"].map({"0": "negative", "1": "positive"})).to_csv(path, index=False)
    return path


def _workspace(tmp_path: Path, endpoint: str) -> Path:
    remote = {"url": f"s3://{BUCKET}/dvc", "endpoint_url": endpoint}
    return make_workspace(tmp_path / "ws", {**TINY_CONFIG, "data": {**TINY_CONFIG["data"], "remote": remote}})


def _remote_objects(client) -> dict[str, bytes]:
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    return {k: client.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in keys}


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _faults(proxy: FaultyS3Proxy) -> int:
    return sum(proxy.counts[kind] for kind in ("slowdown", "drop", "drop-after"))


def _ingest(root: Path, source: Path, batch_id: str) -> int:
    from flows.cli import main

    return main(["ingest", str(source), "--batch-id", batch_id, "--workspace", str(root)])


def test_ingest_and_pull_converge_through_30_percent_faults_with_exact_bytes(flaky_s3, tmp_path):
    from tasks.versioning import checkout_version, data_version, pull_data, remote_settings
    from tasks.workspace import Workspace

    proxy, client = flaky_s3
    root = _workspace(tmp_path, proxy.endpoint)
    ws = Workspace.at(root)
    assert _ingest(root, _csv(tmp_path, 0), "first") == 0
    assert _ingest(root, _csv(tmp_path, 200), "second") == 0
    version = data_version(ws)
    # What moto holds (read past the proxy) is byte for byte the local cache: each object's
    # md5 is its name, and the .dir manifest is the one data.dvc names.
    objects = _remote_objects(client)
    cache = root / ".dvc" / "cache"
    assert f"dvc/files/md5/{version[:2]}/{version[2:]}" in objects
    for key, body in objects.items():
        assert body == (cache / key.removeprefix("dvc/")).read_bytes(), key
        if not key.endswith(".dir"):
            assert hashlib.md5(body, usedforsecurity=False).hexdigest() == "".join(key.split("/")[-2:])

    pushed = _faults(proxy)
    assert pushed >= 3 and proxy.counts["forwarded"] > pushed, proxy.counts  # faults really happened

    # Pull (wiped cache and data) and a lineage-style checkout through the same flaky proxy.
    before = _files(ws.data)
    shutil.rmtree(cache)
    shutil.rmtree(ws.data)
    pull_data(ws)
    assert _files(ws.data) == before
    restored = checkout_version(version, remote_settings(ws), tmp_path / "restore")
    assert _files(restored) == before
    assert _faults(proxy) - pushed >= 3, proxy.counts  # the pull and the checkout met faults too
    assert sum(proxy.counts.values()) < 1000, proxy.counts  # bounded retries, not an endless loop


def test_a_push_that_never_gets_through_leaves_no_version_and_the_next_ingest_finishes_it(flaky_s3, tmp_path):
    from tasks.versioning import data_version, pull_data
    from tasks.workspace import Workspace

    proxy, client = flaky_s3
    root = _workspace(tmp_path, proxy.endpoint)
    ws = Workspace.at(root)
    assert _ingest(root, _csv(tmp_path, 0), "first") == 0
    state = (data_version(ws), tree_snapshot(ws.data), (root / "data.dvc").read_text())

    proxy.fail_all = True
    seen = sum(proxy.counts.values())
    assert _ingest(root, _csv(tmp_path, 200), "second") == 1
    assert sum(proxy.counts.values()) - seen < 500, proxy.counts  # retries are bounded
    assert (data_version(ws), tree_snapshot(ws.data), (root / "data.dvc").read_text()) == state

    proxy.fail_all, proxy.share = False, 0.0
    assert _ingest(root, _csv(tmp_path, 200), "second") == 0
    version = data_version(ws)
    assert version != state[0] and f"dvc/files/md5/{version[:2]}/{version[2:]}" in _remote_objects(client)
    shutil.rmtree(root / ".dvc" / "cache")
    shutil.rmtree(ws.data)
    pull_data(ws)
    assert sorted(p.name for p in ws.batches.iterdir()) == ["first.parquet", "second.parquet"]
