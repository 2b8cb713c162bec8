"""Secrets in the environment never leak: with fake AWS keys (used for real against moto's S3 on
loopback) and a fake database password set, a full cycle and the read-only commands leave
neither value in the workspace, the report, the DVC remote, MLflow or Prefect."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.conftest import TINY_CONFIG, make_workspace
from tests.reliability.s3_server import moto_s3

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.slow]

BUCKET = "kaizen-secrets"
SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAFAKE0123456789LEAK",
    "AWS_SECRET_ACCESS_KEY": "fakeSecretValue/0123456789abcdefLEAK",
    "MLFLOW_TRACKING_PASSWORD": "fakeDbPassw0rdLEAK",
    "PGPASSWORD": "fakeDbPassw0rdLEAK",
    "DATABASE_URL": "postgresql://kaizen:fakeDbPassw0rdLEAK@127.0.0.1:1/kaizen",
}
# What a leak looks like: each value as it is, URL-quoted, JSON-escaped, and distinctive pieces
# of it, so a truncated or re-encoded copy is caught too.
_VALUES = sorted({v for k, v in SECRETS.items() if k != "DATABASE_URL"})
NEEDLES = sorted(
    {form for v in _VALUES for form in (v, quote(v, safe=""), v.replace("/", "\\/"))}
    | {"AKIAFAKE0123456789", "fakeSecretValue", "0123456789abcdef", "fakeDbPassw0rd"}
)


@pytest.fixture
def secret_env(monkeypatch) -> Iterator[tuple[str, object]]:
    """The secrets in the environment and a moto S3 server that accepts those keys."""
    for key, value in {**SECRETS, "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    with moto_s3(BUCKET) as server:
        yield server


def _hits(where: str, blob: bytes | str) -> list[str]:
    data = blob if isinstance(blob, bytes) else blob.encode("utf-8", "replace")
    return [f"{where}: {needle!r}" for needle in NEEDLES if needle.encode() in data]


def _file_leaks(folders: Iterable[Path]) -> list[str]:
    """Every byte of every file below `folders` (SQLite databases and artifact stores included)."""
    found: list[str] = []
    for folder in folders:
        for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            found += _hits(str(path), path.read_bytes())
    return found


def _mlflow_leaks(client) -> list[str]:
    """Params, tags and metric names of every run; tags, descriptions and sources of every model version."""
    from mlflow.entities import ViewType

    found: list[str] = []
    experiments = client.search_experiments(view_type=ViewType.ALL)
    for exp in experiments:
        found += _hits(f"mlflow experiment {exp.name}", repr((exp.name, exp.tags, exp.artifact_location)))
    runs = client.search_runs([e.experiment_id for e in experiments], run_view_type=ViewType.ALL, max_results=5000)
    for run in runs:
        where = f"mlflow run {run.info.run_id}"
        found += _hits(where, repr((run.data.params, run.data.tags, sorted(run.data.metrics), run.info.run_name)))
    for model in client.search_registered_models():
        found += _hits(f"registered model {model.name}", repr((model.tags, model.description, model.aliases)))
        for mv in client.search_model_versions(f"name='{model.name}'"):
            where = f"model version {model.name}/{mv.version}"
            found += _hits(where, repr((mv.tags, mv.description, mv.source, mv.run_link, mv.aliases)))
    return found


def _prefect_leaks() -> list[str]:
    """Artifacts, flow-run parameters and logs as the Prefect API returns them, and the bytes of
    the harness's database."""
    from prefect.client.orchestration import get_client

    found: list[str] = []
    with get_client(sync_client=True) as client:
        for page in _pages(client.read_artifacts):
            found += _hits(f"prefect artifact {page.key}", repr((page.data, page.description, page.metadata_)))
        for run in _pages(client.read_flow_runs):
            found += _hits(f"prefect flow run {run.name}", repr((run.parameters, run.state and run.state.message)))
        for log in _pages(client.read_logs):
            found += _hits(f"prefect log {log.flow_run_id}", log.message)
    return found + _file_leaks([_prefect_database().parent])


def _prefect_database() -> Path:
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL

    url = PREFECT_API_DATABASE_CONNECTION_URL.value() or ""
    assert url.startswith("sqlite"), "the test harness keeps Prefect's state in SQLite"
    database = Path(url.split(":///", 1)[-1])
    assert database.exists(), database
    return database


def _pages(read) -> Iterator:
    offset = 0
    while True:
        page = read(limit=200, offset=offset)
        yield from page
        if len(page) < 200:
            return
        offset += 200


def _remote_leaks(client) -> list[str]:
    found: list[str] = []
    for obj in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        found += _hits(f"s3://{BUCKET}/{obj['Key']}", client.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read())
    return found


def _run_commands(root: Path, report_dir: Path, capsys) -> str:
    """status, report and lineage through the CLI; returns everything they printed."""
    from flows.cli import main

    printed = ""
    for argv in (["status", "--json"], ["report", "--out", str(report_dir)], ["lineage", "1", "--json"]):
        code = main([*argv, "--workspace", str(root)])
        out = capsys.readouterr()
        assert code == 0, (argv, out.err)
        printed += out.out + out.err
    return printed


def test_secrets_in_the_environment_never_leak(secret_env, demo_files, tmp_path, capsys):
    from dvc.repo import Repo

    from flows.pipeline import continual_training
    from tasks.config import load_config
    from tasks.registry import connect
    from tasks.workspace import Workspace

    endpoint, s3 = secret_env
    remote = {"url": f"s3://{BUCKET}/dvc", "endpoint_url": endpoint}
    root = make_workspace(tmp_path / "ws", {**TINY_CONFIG, "data": {**TINY_CONFIG["data"], "remote": remote}})
    batch_id = next(iter(demo_files))
    summary = continual_training(files=[str(demo_files[batch_id])], batch_ids=[batch_id], workspace=str(root))
    assert summary["version"] == "1", summary
    assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount", 0) > 0  # the keys were really used

    capsys.readouterr()
    printed = _run_commands(root, tmp_path / "report", capsys)
    ws = Workspace.at(root)
    client = connect(ws, load_config(root))
    site_cache = Path(Repo(str(root)).site_cache_dir)
    scan = lambda: (  # noqa: E731
        _hits("command output", printed)
        + _file_leaks([root, tmp_path / "report", site_cache])
        + _mlflow_leaks(client)
        + _prefect_leaks()
        + _remote_leaks(s3)
    )
    assert scan() == []

    _scan_finds_planted_secrets(ws, client, scan)


def _scan_finds_planted_secrets(ws, client, scan) -> None:
    """The scan is not vacuous: a secret planted in a file, an MLflow tag and a Prefect artifact is found."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate

    secret = SECRETS["AWS_SECRET_ACCESS_KEY"]
    run_id = client.search_runs([e.experiment_id for e in client.search_experiments()])[0].info.run_id
    probe = ws.state / "reports" / "probe.json"
    probe.write_text(f'{{"leak": "{secret}"}}')
    client.set_tag(run_id, "probe", secret)
    with get_client(sync_client=True) as prefect:
        artifact = prefect.create_artifact(ArtifactCreate(key="secret-probe", type="markdown", data=secret))
    try:
        found = " ".join(scan())
        for where in (str(probe), str(ws.mlflow_db), f"mlflow run {run_id}", "prefect artifact secret-probe"):
            assert where in found, (where, found)
        # The database file or its write-ahead log, wherever SQLite holds the new row for now.
        assert str(_prefect_database().parent) in found, found
    finally:
        probe.unlink()
        client.delete_tag(run_id, "probe")
        with get_client(sync_client=True) as prefect:
            prefect.delete_artifact(artifact.id)
