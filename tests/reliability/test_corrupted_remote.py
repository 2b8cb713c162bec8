"""Bytes changed in place in the DVC remote: restoring that data version (lineage --checkout's
checkout_version, and pull_data) names the object, refuses, and writes no data. DVC 3 itself
does not re-hash what it downloads, so tasks/versioning.py verifies the cache first."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import SHARED, TINY_CONFIG, make_workspace

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _ingested(tmp_path: Path):
    """A tiny workspace (local DVC remote) holding one batch ingested through the CLI."""
    from flows.cli import main
    from tasks.workspace import Workspace

    root = make_workspace(tmp_path / "ws", TINY_CONFIG)
    frame = pd.read_csv(SHARED / "sst2" / "validation.csv", dtype=str, keep_default_na=False).iloc[:50]
    source = tmp_path / "b1.csv"
    frame.assign(label=frame["label"].map({"0": "negative", "1": "positive"})).to_csv(source, index=False)
    assert main(["ingest", str(source), "--batch-id", "b1", "--workspace", str(root)]) == 0
    return Workspace.at(root)


def _corrupt_batch_object(ws) -> str:
    """Flip one byte of the remote object holding data/batches/b1.parquet; its md5."""
    from tasks.versioning import data_version

    version = data_version(ws)
    store = ws.dvc_remote / "files" / "md5"
    entries = json.loads((store / version[:2] / version[2:]).read_text())
    md5 = next(e["md5"] for e in entries if e["relpath"] == "batches/b1.parquet")
    victim = store / md5[:2] / md5[2:]
    victim.chmod(0o644)  # DVC leaves objects read-only; the corruption happens behind its back
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    return md5


def _expected_line(ws, md5: str) -> str:
    return (
        f"data remote {ws.dvc_remote.resolve()}: object files/md5/{md5[:2]}/{md5[2:]} "
        f"(batch data/batches/b1.parquet) does not match its md5 {md5}; refusing to restore"
    )


def test_checkout_of_a_corrupted_version_names_the_object_and_restores_nothing(tmp_path):
    from tasks.versioning import VersioningError, checkout_version, data_version, remote_settings

    ws = _ingested(tmp_path)
    md5 = _corrupt_batch_object(ws)
    target = tmp_path / "restore"
    with pytest.raises(VersioningError) as caught:
        checkout_version(data_version(ws), remote_settings(ws), target)
    assert str(caught.value) == _expected_line(ws, md5)
    assert "\n" not in str(caught.value)
    assert not (target / "data").exists()


def test_pull_of_a_corrupted_version_leaves_data_absent_and_recovers_once_repaired(tmp_path):
    from tasks.versioning import VersioningError, pull_data

    ws = _ingested(tmp_path)
    good = {p.relative_to(ws.data): p.read_bytes() for p in ws.data.rglob("*") if p.is_file()}
    md5 = _corrupt_batch_object(ws)
    pristine = good[Path("batches/b1.parquet")]
    shutil.rmtree(ws.root / ".dvc" / "cache")
    shutil.rmtree(ws.data)
    with pytest.raises(VersioningError) as caught:
        pull_data(ws)
    assert str(caught.value) == _expected_line(ws, md5)
    assert not ws.data.exists()
    # The bad copy was dropped from the cache: once the remote object is repaired, a pull converges.
    (ws.dvc_remote / "files" / "md5" / md5[:2] / md5[2:]).write_bytes(pristine)
    pull_data(ws)
    assert {p.relative_to(ws.data): p.read_bytes() for p in ws.data.rglob("*") if p.is_file()} == good


def test_checkout_of_an_intact_version_still_restores_it(tmp_path):
    from tasks.versioning import checkout_version, data_version, remote_settings

    ws = _ingested(tmp_path)
    restored = checkout_version(data_version(ws), remote_settings(ws), tmp_path / "restore")
    assert (restored / "batches" / "b1.parquet").read_bytes() == (ws.batches / "b1.parquet").read_bytes()
