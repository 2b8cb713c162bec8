"""`kaizen doctor` names each disagreement it is there to find, one line each, and exits 1.

One workspace with a champion is built once; each test breaks one record, runs the doctor
through the CLI, and puts the record back (the doctor itself writes nothing).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import make_workspace
from tests.flows.e2e import cli


@pytest.fixture(scope="module")
def built(prefect_harness, demo_files, tmp_path_factory) -> Path:
    ws = make_workspace(tmp_path_factory.mktemp("doctor") / "ws")
    for argv in (["ingest", str(demo_files["demo-1-restaurants"])], ["run"]):
        result = cli([*argv, "--workspace", str(ws)])
        assert result.code == 0, result.why()
    return ws


def doctor(ws: Path, *extra: str):
    return cli(["doctor", "--workspace", str(ws), *extra])


@contextlib.contextmanager
def broken(path: Path, change) -> Iterator[None]:
    """Apply `change` to a file (made writable: DVC and MLflow keep some read-only), restore it."""
    saved = path.read_bytes()
    path.chmod(0o644)
    change(path)
    try:
        yield
    finally:
        path.write_bytes(saved)


def _problems(result) -> list[str]:
    return [line for line in result.out.splitlines() if line.startswith("problem:")]


def test_a_consistent_workspace_passes(built):
    result = doctor(built)
    assert result.code == 0, result.why()
    assert _problems(result) == [] and "doctor: consistent" in result.out


def test_a_changed_object_in_the_data_remote_is_named(built):
    objects = sorted(p for p in (built / ".kaizen" / "dvc-remote").rglob("*") if p.is_file() and p.suffix != ".dir")
    victim = objects[0]
    name = "files/md5/" + victim.parent.name + "/" + victim.name
    with broken(victim, lambda p: p.write_bytes(p.read_bytes() + b"tampered")):
        result = doctor(built)
        quick = doctor(built, "--quick")  # --quick does not re-hash the remote
    assert result.code == 1
    assert _problems(result) == [
        f"problem: remote: {built / '.kaizen' / 'dvc-remote'}: object {name} does not match its md5"
    ]
    assert quick.code == 0, quick.why()


def test_a_missing_object_of_the_data_version_is_named(built):
    listing = next((built / ".kaizen" / "dvc-remote").rglob("*.dir"))
    aside = listing.with_name(listing.name + ".aside")
    shutil.move(listing, aside)
    try:
        result = doctor(built, "--quick")
    finally:
        shutil.move(aside, listing)
    assert result.code == 1 and any("is missing" in line and "data.dvc" in line for line in _problems(result))


def test_registered_weights_that_differ_are_named(built):
    weights = next((built / ".kaizen" / "mlartifacts").rglob("model.safetensors"))
    with broken(weights, lambda p: p.write_bytes(p.read_bytes()[:-1] + b"\x00")):
        result = doctor(built)
    assert result.code == 1
    [line] = _problems(result)
    assert line.startswith("problem: registry: v1: model.safetensors sha256") and "differs from the registered" in line


def test_a_champion_the_ledger_does_not_explain_is_named(built):
    from tasks.context import Context
    from tasks.registry import LEDGER_PREFIX

    ctx = Context.open(built)
    tags = ctx.client.get_registered_model(ctx.model_name).tags
    [(key, value)] = [(k, v) for k, v in tags.items() if k.startswith(LEDGER_PREFIX)]
    ctx.client.delete_registered_model_tag(ctx.model_name, key)
    try:
        result = doctor(built, "--quick")
    finally:
        ctx.client.set_registered_model_tag(ctx.model_name, key, value)
    assert result.code == 1
    assert _problems(result) == ["problem: ledger: champion points at v1, but the ledger's last move is none"]


def test_a_manifest_that_disagrees_with_the_batches_is_named(built):
    manifest = built / "data" / "manifest.json"

    def add_rows(path: Path) -> None:
        entries = json.loads(path.read_text())
        entries[0]["rows"] += 1
        path.write_text(json.dumps(entries, indent=1))

    with broken(manifest, add_rows):
        result = doctor(built, "--quick")
    problems = _problems(result)
    assert result.code == 1
    # The same edit is seen three ways: against the file, against data.dvc, against the history.
    assert any(line.startswith("problem: data: batch ") and "manifest says" in line for line in problems)
    assert any("differs from the data version in data.dvc" in line for line in problems)
    assert any(line.startswith("problem: history:") for line in problems)


def test_history_statistics_that_disagree_are_named(built):
    stats = built / ".kaizen" / "history" / "stats.json"

    def drop_a_label(path: Path) -> None:
        raw = json.loads(path.read_text())
        raw["stats"]["label_counts"]["positive"] -= 1
        path.write_text(json.dumps(raw))

    with broken(stats, drop_a_label):
        result = doctor(built, "--quick")
    assert result.code == 1 and [line.split(":")[1].strip() for line in _problems(result)] == ["history"]
