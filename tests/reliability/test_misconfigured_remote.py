"""A misconfigured data remote (unreachable endpoint, no credentials, no such bucket) is refused
in one line before anything is written; a correct one still ingests. S3 is moto's server on
loopback, started and stopped here."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import SHARED, TINY_CONFIG, make_workspace, tree_snapshot
from tests.reliability.s3_server import TEST_KEYS, free_port, moto_s3

pytestmark = pytest.mark.usefixtures("prefect_harness")
BUCKET = "kaizen-data"


@pytest.fixture
def aws_env(monkeypatch) -> None:
    for key, value in TEST_KEYS.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(name="moto_s3")
def moto_s3_fixture(aws_env) -> Iterator[tuple[str, object]]:
    """(endpoint, boto3 client) of a moto S3 server on loopback holding BUCKET."""
    with moto_s3(BUCKET) as server:
        yield server


def _workspace(tmp_path: Path, url: str, endpoint: str) -> Path:
    remote = {"url": url, "endpoint_url": endpoint}
    return make_workspace(tmp_path / "ws", {**TINY_CONFIG, "data": {**TINY_CONFIG["data"], "remote": remote}})


def _input(tmp_path: Path) -> Path:
    frame = pd.read_csv(SHARED / "sst2" / "validation.csv", dtype=str, keep_default_na=False).iloc[:200]
    path = tmp_path / "batch.csv"
    frame.assign(label=frame["label"].map({"0": "negative", "1": "positive"})).to_csv(path, index=False)
    return path


def _written(root: Path) -> dict:
    """Everything an ingest writes: data/ (batches, manifest), data.dvc, staging, quarantine."""
    return {
        "data": tree_snapshot(root / "data"),
        "data.dvc": (root / "data.dvc").read_bytes() if (root / "data.dvc").exists() else None,
        "staging": tree_snapshot(root / ".kaizen" / "staging"),
        "quarantine": tree_snapshot(root / ".kaizen" / "quarantine"),
        "dvc config": (root / ".dvc" / "config").read_bytes(),
        "push marker": (root / ".kaizen" / "push-pending").exists(),
    }


def _refused(root: Path, file: Path, capsys) -> str:
    """Run `kaizen ingest FILE`; assert exit 1, one stderr line and nothing written; return the line."""
    from flows.cli import main

    before = _written(root)
    capsys.readouterr()
    code = main(["ingest", str(file), "--batch-id", "b1", "--workspace", str(root)])
    err = capsys.readouterr().err.splitlines()
    assert code == 1, err
    assert len(err) == 1 and err[0].startswith("kaizen: error: "), err
    assert _written(root) == before
    return err[0]


def test_unreachable_endpoint_is_refused_in_one_line(aws_env, tmp_path, capsys):
    endpoint = f"http://127.0.0.1:{free_port()}"  # bound and closed again: nothing listens there
    root = _workspace(tmp_path, f"s3://{BUCKET}/dvc", endpoint)
    line = _refused(root, _input(tmp_path), capsys)
    assert line.startswith(f"kaizen: error: data remote s3://{BUCKET}/dvc: endpoint {endpoint} is unreachable (")


def test_missing_credentials_are_refused_in_one_line(moto_s3, tmp_path, capsys, monkeypatch):
    import os

    endpoint, _ = moto_s3
    root = _workspace(tmp_path, f"s3://{BUCKET}/dvc", endpoint)
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-such-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-such-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    line = _refused(root, _input(tmp_path), capsys)
    assert line == (
        f"kaizen: error: data remote s3://{BUCKET}/dvc: no AWS credentials found "
        "(boto3 credential chain: environment, ~/.aws, instance role)"
    )


def test_nonexistent_bucket_is_refused_in_one_line(moto_s3, tmp_path, capsys):
    endpoint, client = moto_s3
    root = _workspace(tmp_path, "s3://no-such-bucket/dvc", endpoint)
    buckets = lambda: sorted(b["Name"] for b in client.list_buckets()["Buckets"])  # noqa: E731
    before = buckets()
    line = _refused(root, _input(tmp_path), capsys)
    assert line == "kaizen: error: data remote s3://no-such-bucket/dvc: bucket 'no-such-bucket' does not exist"
    assert buckets() == before  # moto's state is per process: other tests' buckets may be there


def test_the_flow_itself_checks_the_remote_before_staging(moto_s3, tmp_path):
    """Callers that skip the CLI (a deployment running the ingest flow) get the same refusal."""
    from flows.pipeline import ingest
    from tasks.versioning import VersioningError

    endpoint, _ = moto_s3
    root = _workspace(tmp_path, "s3://no-such-bucket/dvc", endpoint)
    before = _written(root)
    with pytest.raises(VersioningError, match="bucket 'no-such-bucket' does not exist"):
        ingest(str(_input(tmp_path)), "b1", str(root))
    assert _written(root) == before


def test_unusable_local_remote_is_refused_in_one_line(workspace, tmp_path, capsys):
    remote = workspace / ".kaizen" / "dvc-remote"
    remote.rmdir()
    remote.write_text("a file where the remote directory should be\n")
    line = _refused(workspace, _input(tmp_path), capsys)
    assert line == f"kaizen: error: data remote {remote}: is not a directory"


def test_a_correct_remote_still_ingests(moto_s3, tmp_path, capsys):
    from flows.cli import main

    endpoint, client = moto_s3
    root = _workspace(tmp_path, f"s3://{BUCKET}/dvc", endpoint)
    assert main(["ingest", str(_input(tmp_path)), "--batch-id", "b1", "--workspace", str(root)]) == 0
    assert (root / "data" / "batches" / "b1.parquet").exists()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert keys and all(k.startswith("dvc/files/md5/") for k in keys)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("404", "bucket 'b' does not exist"),
        ("NoSuchBucket", "bucket 'b' does not exist"),
        ("403", "access denied"),
        ("InvalidAccessKeyId", "access denied"),
        ("301", "bucket 'b' is in another region"),
    ],
)
def test_each_s3_answer_names_its_cause(code, expected):
    from botocore.exceptions import ClientError

    from tasks.versioning import _s3_cause

    exc = ClientError({"Error": {"Code": code, "Message": "x"}}, "HeadBucket")
    assert _s3_cause(exc, "b", "http://127.0.0.1:1").startswith(expected)


def test_an_endpoint_password_stays_out_of_the_message(aws_env, tmp_path):
    from tasks.config import RemoteConfig
    from tasks.versioning import VersioningError, check_remote
    from tasks.workspace import Workspace

    port = free_port()
    remote = RemoteConfig(url="s3://b/p", endpoint_url=f"http://minio:fakePassw0rdLEAK@127.0.0.1:{port}")
    with pytest.raises(VersioningError) as refused:
        check_remote(Workspace.at(tmp_path / "ws"), remote)
    assert "fakePassw0rdLEAK" not in str(refused.value)
    assert f"endpoint http://127.0.0.1:{port} is unreachable" in str(refused.value)
