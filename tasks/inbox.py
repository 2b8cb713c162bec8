"""Where new files land for `kaizen serve`: a directory or an S3 prefix (`schedule.inbox`).

An upstream job drops a file there (or calls `kaizen submit`); `watch-inbox` announces every
file that has stopped changing as a `kaizen.batch.landed` event; the `ingest` deployment takes
the file, ingests or quarantines it, and removes it. Announcements are remembered in
`.kaizen/inbox/announced.json` so a file waiting for its ingest is not announced on every poll,
and is announced again if its event was lost (a server restart) after `schedule.reemit_seconds`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from tasks.config import KaizenConfig
from tasks.errors import KaizenError
from tasks.ingest import FORMATS, write_atomic
from tasks.workspace import Workspace

# Names an upstream copy in progress uses; never picked up.
IN_PROGRESS_SUFFIXES = (".part", ".tmp", ".partial", ".crdownload")


class InboxError(KaizenError):
    pass


@dataclass(frozen=True)
class Landed:
    name: str
    size: int
    mtime: float

    @property
    def signature(self) -> str:
        return f"{self.size}:{self.mtime:.3f}"


class Inbox(Protocol):
    where: str

    def list(self) -> list[Landed]: ...

    def fetch(self, name: str, dest_dir: Path) -> Path: ...

    def remove(self, name: str) -> None: ...

    def put(self, file: Path, name: str) -> None: ...


def is_candidate(name: str) -> bool:
    """A file kaizen can ingest, complete (not a hidden or in-progress copy), at the top level."""
    return (
        "/" not in name
        and not name.startswith(".")
        and not name.lower().endswith(IN_PROGRESS_SUFFIXES)
        and Path(name).suffix.lower() in FORMATS
    )


def check_name(name: str) -> str:
    # A name comes from an event, so it is checked like any outside input: no path, no traversal.
    if not name or Path(name).name != name or name in (".", "..") or not is_candidate(name):
        raise InboxError(f"inbox file name {name!r} is not a plain name of a CSV, Parquet or JSONL file")
    return name


class LocalInbox:
    def __init__(self, root: Path):
        self.root, self.where = root, str(root)

    def list(self) -> list[Landed]:
        if not self.root.is_dir():
            return []
        found = []
        for path in sorted(self.root.iterdir()):
            if path.is_file() and is_candidate(path.name):
                stat = path.stat()
                found.append(Landed(path.name, stat.st_size, stat.st_mtime))
        return found

    def fetch(self, name: str, dest_dir: Path) -> Path:
        source = self.root / check_name(name)
        if not source.is_file():
            raise FileNotFoundError(source)
        dest_dir.mkdir(parents=True, exist_ok=True)
        target = dest_dir / name
        shutil.copyfile(source, target)
        return target

    def remove(self, name: str) -> None:
        (self.root / check_name(name)).unlink(missing_ok=True)

    def put(self, file: Path, name: str) -> None:
        # Copied under a hidden name and renamed, so the watcher never sees half a file.
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self.root / check_name(name), lambda tmp: shutil.copyfile(file, tmp))


class S3Inbox:
    """An S3 prefix, reached with the data remote's endpoint and region and the boto3
    credential chain (never credentials in config)."""

    def __init__(self, url: str, endpoint_url: str, region: str):
        import boto3

        parsed = urlparse(url)
        self.bucket, self.prefix = parsed.netloc, parsed.path.lstrip("/")
        if self.prefix and not self.prefix.endswith("/"):
            self.prefix += "/"
        self.where = f"s3://{self.bucket}/{self.prefix}"
        self.client = boto3.client("s3", endpoint_url=endpoint_url or None, region_name=region or None)

    def list(self) -> list[Landed]:
        found = []
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                name = obj["Key"][len(self.prefix) :]
                if is_candidate(name):
                    found.append(Landed(name, int(obj["Size"]), obj["LastModified"].timestamp()))
        return sorted(found, key=lambda f: f.name)

    def fetch(self, name: str, dest_dir: Path) -> Path:
        from botocore.exceptions import ClientError

        dest_dir.mkdir(parents=True, exist_ok=True)
        target = dest_dir / check_name(name)
        try:
            self.client.download_file(self.bucket, self.prefix + name, str(target))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                raise FileNotFoundError(f"{self.where}{name}") from None
            raise
        return target

    def remove(self, name: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.prefix + check_name(name))

    def put(self, file: Path, name: str) -> None:
        # One PUT: an S3 object appears whole or not at all.
        self.client.upload_file(str(file), self.bucket, self.prefix + check_name(name))


def open_inbox(ws: Workspace, config: KaizenConfig) -> Inbox:
    where = config.schedule.inbox
    if where.startswith("s3://"):
        remote = config.data.remote
        return S3Inbox(where, remote.endpoint_url, remote.region)
    if "://" in where:
        raise InboxError(f"schedule.inbox {where!r}: a directory or an s3:// prefix")
    path = Path(where)
    return LocalInbox(path if path.is_absolute() else ws.root / path)


# --- what was announced ----------------------------------------------------------------------


def _announced_path(ws: Workspace) -> Path:
    return ws.state / "inbox" / "announced.json"


def read_announced(ws: Workspace) -> dict[str, dict]:
    path = _announced_path(ws)
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError:
        return {}  # a torn write only costs a repeated announcement; ingest is idempotent


def _write_announced(ws: Workspace, state: dict[str, dict]) -> None:
    path = _announced_path(ws)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(state, indent=1)))


def due(ws: Workspace, files: list[Landed], settle_seconds: float, reemit_seconds: float, now: float) -> list[Landed]:
    """Files to announce now: settled (unchanged for `settle_seconds`), and never announced in
    this form, or announced more than `reemit_seconds` ago and still waiting."""
    announced = read_announced(ws)
    ready = []
    for f in files:
        if now - f.mtime < settle_seconds:
            continue
        seen = announced.get(f.name)
        if seen and seen.get("signature") == f.signature and now - seen.get("at", 0) < reemit_seconds:
            continue
        ready.append(f)
    return ready


def mark_announced(ws: Workspace, files: list[Landed], present: set[str], now: float | None = None) -> None:
    """Remember `files` as announced; names no longer in the inbox (`present`) are forgotten."""
    state = {name: seen for name, seen in read_announced(ws).items() if name in present}
    at = time.time() if now is None else now
    state.update({f.name: {"signature": f.signature, "at": at} for f in files})
    _write_announced(ws, state)


def forget(ws: Workspace, name: str) -> None:
    state = read_announced(ws)
    if state.pop(name, None) is not None:
        _write_announced(ws, state)


def forget_all(ws: Workspace) -> None:
    """At `kaizen serve` start: events sent before are gone with the server that queued them."""
    _announced_path(ws).unlink(missing_ok=True)


def set_aside(ws: Workspace, local_copy: Path, name: str, why: str) -> Path:
    """A file that cannot be read as a batch at all (quarantine holds only readable batches):
    kept with the reason under .kaizen/inbox/unreadable/, out of the inbox."""
    target_dir = ws.state / "inbox" / "unreadable"
    target_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = target_dir / f"{stamp}-{name}"
    os.replace(local_copy, target)
    target.with_name(target.name + ".reason.txt").write_text(why + "\n")
    return target
