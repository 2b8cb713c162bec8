"""Bad input: one clear line, non-zero exit, and nothing written to data/, the DVC remote,
the registry or quarantine (file-level problems never start a flow)."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.conftest import tree_snapshot


def _versions(ws_root) -> int:
    from tasks.config import load_config
    from tasks.registry import connect, list_versions
    from tasks.workspace import Workspace

    config = load_config(ws_root)
    return len(list_versions(connect(Workspace.at(ws_root), config), config.registry.model_name))


def _state(ws_root):
    from tasks.workspace import Workspace

    ws = Workspace.at(ws_root)
    return {
        "data": tree_snapshot(ws.data),
        "remote": tree_snapshot(ws.dvc_remote),
        "dvc_file": ws.dvc_file.read_text() if ws.dvc_file.exists() else None,
        # Validation runs are logged to the `<project>-data` experiment; models never change.
        "model_artifacts": {k: v for k, v in tree_snapshot(ws.mlflow_artifacts).items() if "-data/" not in k},
        "registry": _versions(ws_root),
        "quarantine": tree_snapshot(ws.quarantine),
    }


def _bad_files(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header_only.csv").write_text("text,label\n")
    (tmp_path / "cols.csv").write_text("review,sentiment\nnice,positive\n")
    (tmp_path / "sheet.xlsx").write_text("not really a spreadsheet")
    return {
        "missing": (tmp_path / "nope.csv", "nope.csv: no such file"),
        "format": (tmp_path / "sheet.xlsx", "unknown format '.xlsx'"),
        "empty": (tmp_path / "empty.csv", "empty.csv: file is empty"),
        "header only": (tmp_path / "header_only.csv", "header_only.csv: has a header but no rows"),
        "columns": (tmp_path / "cols.csv", "cols.csv: missing required column(s) text, label"),
    }


@pytest.mark.parametrize("case", ["missing", "format", "empty", "header only", "columns"])
@pytest.mark.parametrize("command", ["ingest", "run"])
def test_bad_file_is_refused_with_one_line(workspace, tmp_path, capsys, case, command):
    from flows.cli import main

    path, expected = _bad_files(tmp_path)[case]
    before = _state(workspace)
    capsys.readouterr()
    code = main([command, str(path), "--workspace", str(workspace)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(err) == 1 and err[0].startswith("kaizen: error: ") and expected in err[0], err
    assert _state(workspace) == before


@pytest.mark.usefixtures("prefect_harness")
def test_unknown_label_is_quarantined_and_nothing_else_changes(workspace, tmp_path, capsys):
    from flows.cli import main

    rows = [{"text": f"review number {i} is here", "label": ["positive", "negative", "meh"][i % 3]} for i in range(60)]
    path = tmp_path / "labels.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    before = _state(workspace)
    capsys.readouterr()
    code = main(["ingest", str(path), "--batch-id", "odd-labels", "--workspace", str(workspace)])
    err = capsys.readouterr().err
    assert code == 1
    assert "batch odd-labels failed validation" in err and "label in declared label set: 20 unexpected" in err
    after = _state(workspace)
    assert {k: v for k, v in after.items() if k != "quarantine"} == {
        k: v for k, v in before.items() if k != "quarantine"
    }
    assert set(after["quarantine"]) == {"odd-labels/batch.parquet", "odd-labels/report.json", "odd-labels/source.txt"}


def test_invalid_config_names_the_field(workspace, capsys):
    from flows.cli import main

    capsys.readouterr()
    assert main(["status", "--workspace", str(workspace)]) == 0
    (workspace / "kaizen.yaml").write_text("train:\n  epochs: -1\n")
    capsys.readouterr()
    assert main(["status", "--workspace", str(workspace)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.epochs" in err[0]


def test_failed_push_rolls_the_batch_back(workspace, monkeypatch):
    """If dvc push fails, the batch leaves data/ again and data.dvc is as it was."""
    from tasks import versioning
    from tasks.config import load_config
    from tasks.ingest import accept_batch, read_manifest, stage_file
    from tasks.workspace import Workspace

    ws = Workspace.at(workspace)
    config = load_config(ws.root)
    path = workspace.parent / "good.csv"
    pd.DataFrame({"text": [f"text {i}" for i in range(40)], "label": ["positive", "negative"] * 20}).to_csv(
        path, index=False
    )
    staged = stage_file(ws, config, path, "good")
    before = (ws.dvc_file.read_text() if ws.dvc_file.exists() else None, tree_snapshot(ws.data))

    def failing_commit(_ws):
        raise versioning.VersioningError("simulated: remote unreachable")

    with pytest.raises(versioning.VersioningError):
        accept_batch(ws, staged, failing_commit, config)
    assert (ws.dvc_file.read_text() if ws.dvc_file.exists() else None, tree_snapshot(ws.data)) == before
    assert read_manifest(ws) == []
    # The staged file is still there, so the same batch can be accepted on a retry.
    info, version = accept_batch(ws, staged, versioning.commit_data, config)
    assert info.batch_id == "good" and version == versioning.data_version(ws)


@pytest.mark.parametrize("where", ["--set", "env", "file"])
def test_bad_config_value_names_where_it_came_from(workspace, capsys, monkeypatch, where):
    """`--set train.epochs=-1` used to be reported as if kaizen.yaml held the bad value."""
    from flows.cli import main

    args = ["status", "--workspace", str(workspace)]
    if where == "--set":
        args = ["config", "show", "--set", "train.epochs=-1", "--workspace", str(workspace)]
    elif where == "env":
        monkeypatch.setenv("KAIZEN_TRAIN__EPOCHS", "-1")
    else:
        (workspace / "kaizen.yaml").write_text("train:\n  epochs: -1\n")
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    expected = {
        "--set": "--set train.epochs=-1: train.epochs:",
        "env": "environment variable KAIZEN_TRAIN__EPOCHS: train.epochs:",
        "file": f"{workspace / 'kaizen.yaml'}: train.epochs:",
    }[where]
    assert len(err) == 1 and expected in err[0], err
