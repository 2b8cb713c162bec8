"""Resource faults: a full disk mid-write, and an input file too large to load.

Each fails with one clear line and leaves the previous state intact.
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO, tree_snapshot

ENOSPC = OSError(errno.ENOSPC, "No space left on device")


def _full_disk_after_some_bytes(path, payload: bytes = b"PAR1 partial") -> None:
    """What a writer does when the disk fills mid-file: some bytes land, then ENOSPC."""
    with open(path, "wb") as handle:
        handle.write(payload)
    raise OSError(errno.ENOSPC, "No space left on device")


def _rows(n: int = 40) -> pd.DataFrame:
    return pd.DataFrame(
        {"text": [f"review number {i} of this place" for i in range(n)], "label": ["positive", "negative"] * (n // 2)}
    )


def _sparse_csv(path: Path, size: int) -> Path:
    """A file of `size` bytes that takes no disk: the limit must refuse it from its size alone."""
    with open(path, "wb") as handle:
        handle.write(b"text,label\n")
        handle.truncate(size)
    return path


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kaizen: error: "), lines
    return lines[0]


def _workspace_state(root: Path) -> dict:
    """What a refused or failed ingest must leave as it was (the workspace lock file may appear)."""
    from tasks.workspace import Workspace

    ws = Workspace.at(root)
    return {
        "data": tree_snapshot(ws.data),
        "dvc_file": ws.dvc_file.read_text() if ws.dvc_file.exists() else None,
        "staging": tree_snapshot(ws.state / "staging"),
        "quarantine": tree_snapshot(ws.quarantine),
    }


# --- inputs larger than memory allows --------------------------------------------------------


def test_a_file_over_the_limit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    from tasks.ingest import DEFAULT_MAX_FILE_BYTES, IngestError, read_table

    big = _sparse_csv(tmp_path / "huge.csv", 3 * 2**30)
    assert DEFAULT_MAX_FILE_BYTES == 2 * 2**30

    def never(*args, **kwargs):
        raise AssertionError("the file was opened for reading")

    monkeypatch.setattr(pd, "read_csv", never)
    with pytest.raises(IngestError) as caught:
        read_table(big)
    message = str(caught.value)
    assert "huge.csv" in message and "3.0 GiB" in message and str(3 * 2**30) in message
    assert "validation.max_file_bytes" in message and str(2 * 2**30) in message


@pytest.mark.parametrize("command", ["ingest", "run"])
def test_a_configured_small_limit_refuses_an_ordinary_file(workspace, tmp_path, capsys, command):
    from flows.cli import main

    path = tmp_path / "normal.csv"
    _rows().to_csv(path, index=False)
    size = path.stat().st_size
    assert size > 1000
    before = _workspace_state(workspace)
    capsys.readouterr()
    code = main([command, str(path), "--set", "validation.max_file_bytes=1000", "--workspace", str(workspace)])
    line = _one_error_line(capsys.readouterr().err)
    assert code == 1
    assert "normal.csv" in line and f"({size} bytes)" in line and "validation.max_file_bytes" in line
    assert "(1000 bytes)" in line
    assert _workspace_state(workspace) == before


def _peak_rss_of(args: list[str]) -> tuple[int, str, int]:
    """Run `python -m flows.cli ARGS` in a fresh parent so RUSAGE_CHILDREN holds only that child
    (in this process it would hold every child pytest ever waited for)."""
    probe = (
        "import json, resource, subprocess, sys\n"
        "p = subprocess.run([sys.executable, '-m', 'flows.cli', *sys.argv[1:]], capture_output=True, text=True)\n"
        "print(json.dumps([p.returncode, p.stderr, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe, *args], cwd=REPO, capture_output=True, text=True, check=True)
    code, err, maxrss_kib = json.loads(out.stdout.strip().splitlines()[-1])
    return code, err, maxrss_kib


def test_validate_refuses_a_3gib_file_without_loading_it(workspace, tmp_path):
    big = _sparse_csv(tmp_path / "huge.csv", 3 * 2**30)
    code, err, maxrss_kib = _peak_rss_of(["validate", str(big), "--workspace", str(workspace)])
    line = _one_error_line(err)
    assert code == 1 and "huge.csv" in line and "larger than validation.max_file_bytes" in line
    # The whole command, interpreter and imports included, stays far below the file's size.
    assert maxrss_kib * 1024 < 2**30, maxrss_kib


# --- a full disk mid-write ---------------------------------------------------------------------


def _disk_full_from_write(number: int):
    """A to_parquet that works `number - 1` times, then finds the disk full."""
    real, calls = pd.DataFrame.to_parquet, []

    def to_parquet(self, target, **kwargs):
        calls.append(str(target))
        if len(calls) < number:
            return real(self, target, **kwargs)
        return _full_disk_after_some_bytes(target)

    return to_parquet


# Write 1 stages the batch in .kaizen/staging; write 2 puts it into data/batches.
@pytest.mark.parametrize("full_from", [1, 2], ids=["staging", "data"])
@pytest.mark.usefixtures("prefect_harness")
def test_a_full_disk_while_ingesting_leaves_data_and_staging_untouched(workspace, tmp_path, monkeypatch, full_from):
    from flows.cli import main

    path = tmp_path / "batch.csv"
    _rows().to_csv(path, index=False)
    before = _workspace_state(workspace)
    monkeypatch.setattr(pd.DataFrame, "to_parquet", _disk_full_from_write(full_from))
    try:
        main(["ingest", str(path), "--batch-id", "full-disk", "--workspace", str(workspace)])
    except OSError as exc:  # a StorageError (KaizenError and OSError); state is what this test checks
        assert exc.errno == errno.ENOSPC
    after = _workspace_state(workspace)
    assert not list(Path(workspace).rglob("*.tmp"))  # no temporary left behind by write_atomic
    # No partial batch in data/, manifest and data.dvc as they were, nothing quarantined.
    assert {k: v for k, v in after.items() if k != "staging"} == {k: v for k, v in before.items() if k != "staging"}
    if full_from == 1:
        assert after["staging"] == before["staging"]
    # With full_from == 2 the complete, validated staged copy stays in .kaizen/staging
    # (accept_batch only removes it after success); it holds no partial data.


def test_a_full_disk_while_ingesting_is_one_line_naming_the_file(workspace, tmp_path):
    # What a user's terminal shows, so the command runs in a process of its own: in this one,
    # what reaches stderr depends on the logging handlers earlier tests' flows set up.
    path = tmp_path / "batch.csv"
    _rows().to_csv(path, index=False)
    full_disk = (
        "import errno, sys, pandas as pd\n"
        "def full(self, target, **kw):\n"
        "    open(target, 'wb').write(b'PAR1 partial')\n"
        "    raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "pd.DataFrame.to_parquet = full\n"
        "from flows.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    argv = ["ingest", str(path), "--batch-id", "full-disk", "--workspace", str(workspace)]
    done = subprocess.run([sys.executable, "-c", full_disk, *argv], cwd=REPO, capture_output=True, text=True)
    # Prefect's progress lines stay; the error is one line, and no traceback buries it.
    errors = [line for line in done.stderr.splitlines() if line.startswith("kaizen: error: ")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 1 and "no space left on device" in errors[0].lower() and "full-disk" in errors[0]


def test_a_full_disk_while_featurizing_is_one_error_naming_the_file(workspace, monkeypatch):
    import numpy as np

    from models.base import load_tokenizer
    from tasks.config import load_config
    from tasks.featurize import FeatureError, featurize_batch
    from tasks.ingest import content_hash, prepare_batch, write_batch
    from tasks.workspace import Workspace

    ws = Workspace.at(workspace)
    config = load_config(ws.root)
    for batch_id, rows in (("b1", _rows(20)), ("b2", _rows(40))):
        batch = prepare_batch(rows, config, "test")
        write_batch(ws, batch_id, batch, content_hash(batch), "test")
    tokenizer = load_tokenizer("tiny")
    featurize_batch(ws, "b1", tokenizer, 64)
    cached = tree_snapshot(ws.features)
    monkeypatch.setattr(np, "savez", lambda handle, **arrays: (handle.write(b"PK partial"), _raise_enospc()))
    with pytest.raises(FeatureError) as caught:
        featurize_batch(ws, "b2", tokenizer, 64)
    message = str(caught.value)
    assert "no space left on device" in message and str(ws.features) in message and "\n" not in message
    assert tree_snapshot(ws.features) == cached  # no partial file, no temporary, b1's cache intact


def _raise_enospc() -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def _tiny_training_state():
    import torch

    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return model, optimizer, scheduler


def _checkpoint_then_full_disk(root: Path, monkeypatch) -> None:
    import safetensors.torch

    from tasks.train import write_checkpoint

    model, optimizer, scheduler = _tiny_training_state()
    write_checkpoint(root, 1, model, optimizer, scheduler, {"step": 1}, None, keep=2)
    monkeypatch.setattr(safetensors.torch, "save_file", lambda tensors, path, **kw: _full_disk_after_some_bytes(path))
    with pytest.raises(OSError) as caught:
        write_checkpoint(root, 2, model, optimizer, scheduler, {"step": 2}, None, keep=2)
    assert caught.value.errno == errno.ENOSPC


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    from tasks.train import load_latest_checkpoint

    root = tmp_path / "checkpoints"
    _checkpoint_then_full_disk(root, monkeypatch)
    assert not (root / "step-2").exists()
    model, optimizer, scheduler = _tiny_training_state()
    logged: list[str] = []
    state, _ = load_latest_checkpoint(root, model, optimizer, scheduler, logged.append)
    assert state["step"] == 1 and logged == ["train: resuming from checkpoint step-1 (step 1)"]


def test_a_full_disk_while_checkpointing_leaves_no_temporary_directory(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    _checkpoint_then_full_disk(root, monkeypatch)
    assert sorted(p.name for p in root.iterdir()) == ["step-1"]
