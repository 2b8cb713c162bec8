"""DVC on a real S3 API: moto's server on loopback, dvc-s3/boto3, credentials from env only."""

from __future__ import annotations

import hashlib
import shutil

import pandas as pd
import pytest
import yaml

from tests.conftest import SHARED, TINY_CONFIG, make_workspace, tree_snapshot
from tests.reliability.s3_server import TEST_KEYS, moto_s3

pytestmark = pytest.mark.usefixtures("prefect_harness")
BUCKET = "kaizen-data"


@pytest.fixture
def s3(monkeypatch):
    for key, value in TEST_KEYS.items():
        monkeypatch.setenv(key, value)
    with moto_s3(BUCKET) as (endpoint, client):
        yield endpoint, client


def _sst2(offset: int) -> pd.DataFrame:
    frame = pd.read_csv(SHARED / "sst2" / "validation.csv", dtype=str, keep_default_na=False).iloc[
        offset : offset + 200
    ]
    return frame.assign(label=frame["label"].map({"0": "negative", "1": "positive"}))


def _digests(folder) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_ingest_push_wipe_pull_round_trip_and_failed_push(s3, tmp_path, capsys, monkeypatch):
    from flows.cli import main
    from tasks.versioning import data_version, pull_data
    from tasks.workspace import Workspace

    endpoint, client = s3
    settings = {
        **TINY_CONFIG,
        "data": {**TINY_CONFIG["data"], "remote": {"url": f"s3://{BUCKET}/dvc", "endpoint_url": endpoint}},
    }
    root = make_workspace(tmp_path / "ws", settings)
    ws = Workspace.at(root)
    dvc_config = (root / ".dvc" / "config").read_text()
    assert f"s3://{BUCKET}/dvc" in dvc_config and "test-secret" not in dvc_config and "test-key" not in dvc_config

    first = tmp_path / "first.csv"
    _sst2(0).to_csv(first, index=False)
    assert main(["ingest", str(first), "--batch-id", "first", "--workspace", str(root)]) == 0
    version = data_version(ws)
    objects = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert objects and all(k.startswith("dvc/files/md5/") for k in objects)
    assert f"dvc/files/md5/{version[:2]}/{version[2:]}" in objects  # the .dir manifest itself

    # Wipe the local cache and the data, then pull with verification: identical bytes.
    before = _digests(ws.data)
    shutil.rmtree(root / ".dvc" / "cache")
    shutil.rmtree(ws.data)
    pull_data(ws)
    assert _digests(ws.data) == before and data_version(ws) == version

    # A push that fails (the bucket is gone) is reported, and leaves no half-visible version.
    for obj in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    client.delete_bucket(Bucket=BUCKET)
    second = tmp_path / "second.csv"
    _sst2(200).to_csv(second, index=False)
    state = (data_version(ws), tree_snapshot(ws.data), (root / "data.dvc").read_text())
    capsys.readouterr()
    assert main(["ingest", str(second), "--batch-id", "second", "--workspace", str(root)]) == 1
    err = capsys.readouterr().err
    # The remote check refuses before anything is written (tasks/versioning.py: check_remote).
    assert f"kaizen: error: data remote s3://{BUCKET}/dvc: bucket '{BUCKET}' does not exist" in err
    assert (data_version(ws), tree_snapshot(ws.data), (root / "data.dvc").read_text()) == state
    # A push that fails after the remote check passed (the bucket vanished in between) is rolled back.
    with monkeypatch.context() as patch:
        for where in ("tasks.ingest.check_remote", "tasks.versioning.check_remote"):
            patch.setattr(where, lambda ws, remote=None: None)
        assert main(["ingest", str(second), "--batch-id", "second", "--workspace", str(root)]) == 1
    err = capsys.readouterr().err
    assert "dvc add/push" in err and "failed" in err
    assert (data_version(ws), tree_snapshot(ws.data), (root / "data.dvc").read_text()) == state

    # Rerunning once the remote is back converges: both batches are pushed and versioned.
    client.create_bucket(Bucket=BUCKET)
    assert main(["ingest", str(second), "--batch-id", "second", "--workspace", str(root)]) == 0
    assert data_version(ws) != version
    shutil.rmtree(root / ".dvc" / "cache")
    shutil.rmtree(ws.data)
    pull_data(ws)
    assert sorted(p.name for p in ws.batches.iterdir()) == ["first.parquet", "second.parquet"]


def test_config_has_no_place_for_credentials(tmp_path):
    from tasks.config import ConfigError, load_config

    (tmp_path / "kaizen.yaml").write_text(yaml.safe_dump({"data": {"remote": {"url": "s3://b/k", "secret_key": "x"}}}))
    with pytest.raises(ConfigError, match="data.remote.secret_key"):
        load_config(tmp_path, environ={})


def test_a_push_interrupted_after_dvc_add_is_finished_by_the_next_command(s3, tmp_path):
    """The state a kill between `dvc add` and `dvc push` leaves: data.dvc names a version the
    remote lacks. The next command pushes it before doing anything else."""
    from dvc.repo import Repo

    from flows.cli import main
    from tasks.config import load_config
    from tasks.ingest import content_hash, prepare_batch, write_batch
    from tasks.versioning import data_version, pull_data
    from tasks.workspace import Workspace

    endpoint, client = s3
    settings = {
        **TINY_CONFIG,
        "data": {**TINY_CONFIG["data"], "remote": {"url": f"s3://{BUCKET}/dvc", "endpoint_url": endpoint}},
    }
    root = make_workspace(tmp_path / "ws", settings)
    ws = Workspace.at(root)
    batch = prepare_batch(_sst2(0), load_config(root), "interrupted.csv")
    write_batch(ws, "interrupted", batch, content_hash(batch), "interrupted.csv")
    (ws.state / "push-pending").write_text("dvc push not confirmed\n")  # as commit_data leaves it
    Repo(str(root)).add(str(ws.data))  # ... and then the process died
    version = data_version(ws)
    keys = lambda: [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])]  # noqa: E731
    assert f"dvc/files/md5/{version[:2]}/{version[2:]}" not in keys()

    second = tmp_path / "second.csv"
    _sst2(200).to_csv(second, index=False)
    assert main(["ingest", str(second), "--batch-id", "second", "--workspace", str(root)]) == 0
    assert f"dvc/files/md5/{version[:2]}/{version[2:]}" in keys()  # the interrupted version converged
    assert not (ws.state / "push-pending").exists()
    shutil.rmtree(root / ".dvc" / "cache")
    shutil.rmtree(ws.data)
    pull_data(ws)
    assert sorted(p.name for p in ws.batches.iterdir()) == ["interrupted.parquet", "second.parquet"]
