"""Every bad-batch case through the real ingest flow: the named failure, and data/, the DVC
remote and the registry exactly as they were. Batches are cut from real SST-2 rows."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.conftest import SHARED, make_workspace, tree_snapshot

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _sst2(rows: int = 200, offset: int = 300) -> pd.DataFrame:
    frame = pd.read_csv(SHARED / "sst2" / "validation.csv", dtype=str, keep_default_na=False)
    frame = frame.iloc[offset : offset + rows].reset_index(drop=True)
    frame["label"] = frame["label"].map({"0": "negative", "1": "positive"})
    return frame


@pytest.fixture(scope="module")
def home(tmp_path_factory, prefect_harness):
    """A workspace holding one good batch, so leakage and drift have a history."""
    from flows.cli import main

    root = make_workspace(tmp_path_factory.mktemp("bad") / "ws")
    good = root.parent / "good.csv"
    _sst2(rows=300, offset=0).to_csv(good, index=False)
    assert main(["ingest", str(good), "--batch-id", "good", "--workspace", str(root)]) == 0
    return root


def _state(root):
    from tasks.config import load_config
    from tasks.registry import connect, list_versions
    from tasks.versioning import data_version
    from tasks.workspace import Workspace

    ws = Workspace.at(root)
    config = load_config(root)
    return (
        data_version(ws),
        tree_snapshot(ws.data),
        tree_snapshot(ws.dvc_remote),
        len(list_versions(connect(ws, config), config.registry.model_name)),
    )


def _write(frame: pd.DataFrame, path) -> None:
    frame.to_csv(path, index=False)


def _case(name: str, path):
    frame = _sst2()
    if name == "renamed column":
        _write(frame.rename(columns={"text": "sentence"}), path)
        return "missing required column(s) text"
    if name == "extra column":
        _write(frame.assign(reviewer="anon"), path)
        return "no unexpected columns: unexpected: ['reviewer']"
    if name == "zero rows":
        _write(frame.iloc[:0], path)
        return "has a header but no rows"
    if name == "blank text":
        frame.loc[:9, "text"] = "   \t"
        _write(frame, path)
        return "text not empty after stripping: 10 unexpected row(s)"
    if name == "null label":
        frame.loc[:4, "label"] = None
        _write(frame, path)
        return "label not null: 5 unexpected row(s)"
    if name == "unknown label":
        frame.loc[:19, "label"] = "neutral"
        _write(frame, path)
        return "label in declared label set: 20 unexpected row(s)"
    if name == "non-utf8 bytes":
        frame.loc[:9, "text"] = frame.loc[:9, "text"] + " café crème"
        path.write_bytes(frame.to_csv(index=False).encode("latin-1", errors="replace"))
        # 10 rows gain "é"/"è" as latin-1 bytes; two SST-2 rows already held such letters.
        return "encoding debris in at most 1% of rows: 12 unexpected row(s)"
    if name == "mojibake":
        frame.loc[:9, "text"] = frame.loc[:9, "text"].str.replace("'", "â€™", regex=False) + " itâ€™s"
        _write(frame, path)
        return "encoding debris in at most 1% of rows: 10 unexpected row(s)"
    if name == "overlong text":
        frame.loc[:1, "text"] = "so very long " * 200
        _write(frame, path)
        return "text at most 2000 characters: 2 unexpected row(s)"
    if name == "duplicates":
        frame.loc[:39, "text"] = frame.loc[40:79, "text"].to_numpy()
        frame.loc[:39, "label"] = frame.loc[40:79, "label"].to_numpy()
        _write(frame, path)
        return "duplicates at most 5% of rows: 40 unexpected row(s)"
    if name == "two labels":
        twin = frame.iloc[[0]].assign(label="negative" if frame.loc[0, "label"] == "positive" else "positive")
        _write(pd.concat([frame, twin.assign(text=twin["text"].str.upper())], ignore_index=True), path)
        return "no text with two labels: 2 unexpected row(s)"
    if name == "rare class":
        positives = frame[frame["label"] == "positive"].head(3)
        _write(pd.concat([frame[frame["label"] == "negative"], positives], ignore_index=True), path)
        return "every class at least 5% of rows"
    if name == "leakage":
        from tasks.workspace import Workspace  # noqa: F401  (documentation: history lives in the workspace)

        earlier = _sst2(rows=300, offset=0)
        from tasks.config import KaizenConfig
        from tasks.ingest import prepare_batch

        test_rows = prepare_batch(earlier, KaizenConfig(), "x").query("split == 'test'").head(25)
        # The same reviews, re-punctuated: a new split hash, but the same text to a reader.
        leaked = test_rows.assign(text=test_rows["text"].str.upper() + " !!")[["text", "label"]]
        _write(pd.concat([frame, leaked], ignore_index=True), path)
        return "no text already in an earlier test split:"
    if name == "unknown tokens":
        frame.loc[:59, "text"] = frame.loc[:59, "text"] + " 🎬🍿🔥🤯"
        _write(frame, path)
        return "drift: unknown-token rate: increase in [UNK] share (points) ="
    raise AssertionError(name)


CASES = [
    "renamed column",
    "extra column",
    "zero rows",
    "blank text",
    "null label",
    "unknown label",
    "non-utf8 bytes",
    "mojibake",
    "overlong text",
    "duplicates",
    "two labels",
    "rare class",
    "leakage",
    "unknown tokens",
]


@pytest.mark.parametrize("name", CASES)
def test_bad_batch_is_refused_and_named(home, tmp_path, capsys, name):
    from flows.cli import main

    path = tmp_path / f"{name.replace(' ', '_')}.csv"
    expected = _case(name, path)
    before = _state(home)
    capsys.readouterr()
    code = main(["ingest", str(path), "--batch-id", name.replace(" ", "-"), "--workspace", str(home)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert expected in err, err
    assert _state(home) == before


def test_warn_level_drift_lets_the_batch_in_with_a_warning(home, tmp_path):
    from models.base import load_tokenizer
    from tasks.config import load_config
    from tasks.history import load_history
    from tasks.ingest import prepare_batch
    from tasks.validate import validate_batch
    from tasks.workspace import Workspace

    frame = _sst2(rows=400, offset=400)
    skewed = pd.concat([frame[frame["label"] == "positive"].head(180), frame[frame["label"] == "negative"].head(20)])
    config = load_config(home)
    tokenizer = load_tokenizer(config.model.base)
    history, keys = load_history(Workspace.at(home), tokenizer)
    report = validate_batch(prepare_batch(skewed, config, "skewed"), config, [], history, keys, tokenizer)
    assert report.success
    assert any(
        line.startswith("drift: label distribution: total variation distance") for line in report.warning_lines()
    )
