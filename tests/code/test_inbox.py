"""The inbox `kaizen serve` watches: which names are picked up, when a file is announced (and
again), and the same operations on a directory and on an S3 prefix (moto's server on loopback)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tasks import inbox
from tasks.workspace import Workspace


@pytest.mark.parametrize(
    ("name", "picked"),
    [
        ("batch.csv", True),
        ("batch.parquet", True),
        ("b.jsonl", True),
        (".batch.csv", False),
        ("batch.csv.part", False),
        ("batch.csv.tmp", False),
        ("notes.txt", False),
        ("sub/batch.csv", False),
    ],
)
def test_only_complete_supported_top_level_files_are_picked_up(name, picked):
    assert inbox.is_candidate(name) is picked


@pytest.mark.parametrize("name", ["../x.csv", "/etc/x.csv", "..", "a/b.csv", "x.txt", ""])
def test_a_name_from_an_event_that_is_not_a_plain_file_name_is_refused(name):
    with pytest.raises(inbox.InboxError):
        inbox.check_name(name)


def test_a_file_is_announced_once_settled_and_again_only_after_reemit(tmp_path):
    ws = Workspace.at(tmp_path)
    now = time.time()
    fresh, settled = inbox.Landed("new.csv", 10, now - 0.5), inbox.Landed("old.csv", 10, now - 60)
    assert inbox.due(ws, [fresh, settled], settle_seconds=2, reemit_seconds=100, now=now) == [settled]
    inbox.mark_announced(ws, [settled], {"new.csv", "old.csv"}, now=now)
    assert inbox.due(ws, [settled], 2, 100, now + 50) == []
    assert inbox.due(ws, [settled], 2, 100, now + 150) == [settled]
    changed = inbox.Landed("old.csv", 20, now - 30)  # rewritten under the same name: announced again
    assert inbox.due(ws, [changed], 2, 100, now + 50) == [changed]
    inbox.mark_announced(ws, [], set(), now=now)  # gone from the inbox: forgotten
    assert inbox.read_announced(ws) == {}


def exercise(box, tmp_path: Path) -> None:
    source = tmp_path / "source.csv"
    source.write_text("text,label\nhi,positive\n")
    box.put(source, "a.csv")
    assert [f.name for f in box.list()] == ["a.csv"]
    fetched = box.fetch("a.csv", tmp_path / "fetched")
    assert fetched.read_text() == source.read_text()
    box.remove("a.csv")
    assert box.list() == []
    with pytest.raises(FileNotFoundError):
        box.fetch("a.csv", tmp_path / "fetched")


def test_directory_inbox(tmp_path):
    root = tmp_path / "inbox"
    exercise(inbox.LocalInbox(root), tmp_path)
    (root / ".hidden.csv").write_text("x")
    os.utime(root / ".hidden.csv")
    assert inbox.LocalInbox(root).list() == []


def test_s3_prefix_inbox(tmp_path, monkeypatch):
    from tests.reliability.s3_server import TEST_KEYS, moto_s3

    for key, value in TEST_KEYS.items():
        monkeypatch.setenv(key, value)
    with moto_s3("landing") as (endpoint, client):
        client.put_object(Bucket="landing", Key="elsewhere/b.csv", Body=b"x")
        box = inbox.S3Inbox("s3://landing/incoming", endpoint, "us-east-1")
        assert box.where == "s3://landing/incoming/"
        exercise(box, tmp_path)
