"""`kaizen backtest` with its default workspace location, run from the root of a git clone
(`.kaizen/` is git-ignored there), as a new user runs it. DVC used to refuse to init
`.kaizen/backtests/<time>` because git ignores it."""

from __future__ import annotations

import json
import subprocess

import pandas as pd
import pytest
import yaml

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.slow]


def test_backtest_default_location_inside_a_git_clone(tmp_path, monkeypatch, capsys):
    from flows.cli import main
    from tests.conftest import SHARED, TINY_CONFIG

    clone = tmp_path / "clone"
    clone.mkdir()
    subprocess.run(["git", "init", "-q", str(clone)], check=True)
    (clone / ".gitignore").write_text(".kaizen/\n/data\n")
    (clone / "kaizen.yaml").write_text(yaml.safe_dump(TINY_CONFIG))
    monkeypatch.chdir(clone)  # from the repository root, default workspace "."
    capsys.readouterr()
    code = main(
        ["backtest", "--source", str(SHARED / "sst2" / "validation.csv"), "--batches", "2", "--rows", "150", "--json"]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    records = json.loads(out.out)
    assert [r["cycle"] for r in records] == [1, 2]
    created = list((clone / ".kaizen" / "backtests").iterdir())
    assert len(created) == 1 and (created[0] / "data" / "manifest.json").exists()
    ignored = subprocess.run(["git", "check-ignore", "-q", str(created[0])], cwd=clone)
    assert ignored.returncode == 0  # the backtest stays out of the user's git history


def test_backtest_decides_every_policy_on_the_same_evaluations(tmp_path, monkeypatch, capsys):
    """The replay is driven by the configured policy (evidence); its own verdicts must equal the
    cycle outcomes, and each policy's champion is measured on the reference file."""
    from flows.cli import main
    from tests.conftest import SHARED, TINY_CONFIG

    root = tmp_path / "ws"
    root.mkdir()
    (root / "kaizen.yaml").write_text(yaml.safe_dump(TINY_CONFIG))
    reference = tmp_path / "reference.csv"
    names = (SHARED / "sst2" / "label_names.txt").read_text().split()
    sst2 = pd.read_csv(SHARED / "sst2" / "test.csv").head(200)
    sst2.assign(label=sst2["label"].map(lambda i: names[i])).to_csv(reference, index=False)
    capsys.readouterr()
    assert (
        main(
            [
                "backtest",
                "--source",
                str(SHARED / "sst2" / "validation.csv"),
                "--batches",
                "3",
                "--rows",
                "200",
                "--policy",
                "legacy",
                "--policy",
                "evidence",
                "--policy",
                "no-harm",
                "--reference",
                str(reference),
                "--json",
                "--workspace",
                str(root),
            ]
        )
        == 0
    )
    records = json.loads(capsys.readouterr().out)
    expected = {"promoted": "pass", "rejected": "reject", "held": "hold", "holding": "-", "quarantined": "-"}
    for r in records:
        assert set(r["policies"]) == {"legacy", "evidence", "no-harm"}
        assert r["policies"]["evidence"]["verdict"] == expected[r["outcome"]], r
        assert r["policies"]["evidence"]["champion"] == r["champion_after"], r
        for p in r["policies"].values():
            assert (p["champion"] is None) == (p["reference_accuracy"] is None)
            assert p["reference_accuracy"] is None or 0 <= p["reference_accuracy"] <= 1
    assert (
        main(["backtest", "--source", str(reference), "--batches", "1", "--policy", "bogus", "--workspace", str(root)])
        == 2
    )
