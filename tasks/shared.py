"""Scaled out: the data head and the locks every host shares, in PostgreSQL.

With `shared.database_url` set, a workspace is a cache. The truth is elsewhere:
- the data head, one row per published data version in the table `kaizen_data_head`
  (project, seq, data md5, the text of data.dvc); the batches themselves, the manifest and the
  pool are in the DVC remote (S3), named by that data.dvc;
- models, aliases, lineage and the ledger in the MLflow server (its own PostgreSQL database);
- quarantined batches in the DVC remote's bucket under `quarantine/<batch>/`.

Every data change (an ingest, a withdrawal) holds the advisory lock `kaizen:data:<project>`,
first brings the workspace to the newest head, changes and pushes the data, then inserts head
seq+1. The primary key (project, seq) makes that insert a compare-and-set as well: a writer
that lost its lock (a dropped connection) cannot publish over another's change. Every champion
move and ledger entry holds `kaizen:promote:<model>` instead of a local file lock, so the
re-read of `@champion` and the alias write are one step across hosts.

Hand-written because no library in the stack offers it: DVC's lock is per repository on one
disk, MLflow's alias write has no expected-version argument, and Prefect's global concurrency
limits lease slots but do not order writers to a table. Only psycopg2 (the driver MLflow's
server uses for PostgreSQL) is needed.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlparse

from tasks.errors import KaizenError

HEAD_TABLE = "kaizen_data_head"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {HEAD_TABLE} (
    project text NOT NULL,
    seq bigint NOT NULL,
    data_md5 text NOT NULL,
    data_dvc text NOT NULL,
    host text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project, seq)
)"""
CONNECT_TIMEOUT_S = 10


class SharedStoreError(KaizenError, RuntimeError):
    """The shared database cannot be reached or refused a write; nothing was changed."""


@dataclass(frozen=True)
class Head:
    seq: int
    data_md5: str
    data_dvc: str
    host: str


def enabled(config) -> bool:
    return bool(config.shared.database_url)


def shown(url: str) -> str:
    """The URL as it may appear in a message (no user info)."""
    parts = urlparse(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def connect(url: str):
    """An autocommit connection; one line naming the database when it cannot be reached."""
    import psycopg2

    try:
        conn = psycopg2.connect(url, connect_timeout=CONNECT_TIMEOUT_S, application_name="kaizen")
    except psycopg2.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SharedStoreError(f"shared database {shown(url)} cannot be reached: {first}") from None
    conn.autocommit = True
    return conn


class HeldLock:
    """A session-level advisory lock on an open connection; `confirm` before acting on it."""

    def __init__(self, conn, key: str, url: str):
        self.conn, self.key, self.url = conn, key, url

    def confirm(self) -> None:
        """Raise unless this session still holds the lock (a dropped connection releases it)."""
        import psycopg2

        try:
            with self.conn.cursor() as cur:
                cur.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND pid = pg_backend_pid() AND objsubid = 1 "
                    "AND ((classid::bigint << 32) | objid::bigint) = hashtextextended(%s, 0)",
                    (self.key,),
                )
                held = cur.fetchone()[0] == 1
        except psycopg2.Error as exc:
            held, why = False, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        else:
            why = "the lock is no longer held"
        if not held:
            raise SharedStoreError(f"shared lock {self.key} on {shown(self.url)} was lost ({why}); nothing was changed")


@contextlib.contextmanager
def advisory_lock(url: str, key: str, timeout: float, what: str) -> Iterator[HeldLock]:
    """Hold the PostgreSQL advisory lock `key` (waiting at most `timeout` s for another host)."""
    import psycopg2
    from psycopg2 import errors

    conn = connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT set_config('lock_timeout', %s, false)", (f"{int(timeout * 1000)}ms",))
            try:
                cur.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (key,))
            except errors.LockNotAvailable:
                raise SharedStoreError(
                    f"{what}: another host held the shared lock {key} for {timeout:.0f} s; nothing was changed"
                ) from None
            except psycopg2.Error as exc:
                raise SharedStoreError(f"{what}: cannot take the shared lock {key}: {exc}".strip()) from None
        yield HeldLock(conn, key, url)
    finally:
        with contextlib.suppress(Exception):
            conn.close()  # closing the session releases its advisory locks


def champion_guard(ctx):
    """What serialises champion moves and ledger entries: the shared advisory lock when scaled
    out, the workspace (its file lock, one host) otherwise. See tasks/registry.py: _turn."""
    if not enabled(ctx.config):
        return ctx.ws
    url, timeout = ctx.config.shared.database_url, ctx.config.shared.lock_timeout
    return lambda: advisory_lock(url, f"kaizen:promote:{ctx.model_name}", timeout, "promotion")


# --- the data head ------------------------------------------------------------------------------


def ensure_schema(conn) -> None:
    import psycopg2

    with conn.cursor() as cur:
        # Two hosts creating the table at once collide on PostgreSQL's catalog; one transaction-
        # level lock orders them.
        try:
            conn.autocommit = False
            cur.execute("SELECT pg_advisory_xact_lock(hashtextextended('kaizen:schema', 0))")
            cur.execute(_SCHEMA)
            conn.commit()
        except psycopg2.Error:
            conn.rollback()
            raise
        finally:
            conn.autocommit = True


def read_head(conn, project: str) -> Head | None:
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT seq, data_md5, data_dvc, host FROM {HEAD_TABLE} WHERE project = %s ORDER BY seq DESC LIMIT 1",
            (project,),
        )
        row = cur.fetchone()
    return Head(int(row[0]), row[1], row[2], row[3]) if row else None


def publish(conn, project: str, seq: int, data_md5: str, data_dvc: str) -> Head:
    """Insert head `seq`; the primary key refuses a second writer of the same seq."""
    from psycopg2 import errors

    host = os.environ.get("KAIZEN_HOST") or socket.gethostname()
    try:
        with conn.cursor() as cur:
            cur.execute(
                f"INSERT INTO {HEAD_TABLE} (project, seq, data_md5, data_dvc, host) VALUES (%s, %s, %s, %s, %s)",
                (project, seq, data_md5, data_dvc, host),
            )
    except errors.UniqueViolation:
        raise SharedStoreError(
            f"data head #{seq} of {project} was published by another host meanwhile; this change was not published"
        ) from None
    return Head(seq, data_md5, data_dvc, host)


def latest_head(config) -> Head | None:
    conn = connect(config.shared.database_url)
    try:
        ensure_schema(conn)
        return read_head(conn, config.project)
    finally:
        conn.close()


def sync_to(ws, head: Head | None) -> str | None:
    """Make the workspace's data the head's: data.dvc from the head, then a verified `dvc pull`
    (only objects the local cache lacks are downloaded). Returns what was done, if anything."""
    from tasks import versioning

    if head is None:
        return None
    local = ws.dvc_file.read_text() if ws.dvc_file.exists() else ""
    if versioning.data_version(ws) == head.data_md5 and (ws.manifest.exists() or not local):
        return None
    ws.dvc_file.write_text(head.data_dvc)
    versioning.pull_data(ws)
    return f"data: synced to the shared data head #{head.seq} (data version {head.data_md5}, from {head.host})"


def sync(ctx) -> str | None:
    """At the start of a flow run: the workspace becomes the newest published data version."""
    if not enabled(ctx.config):
        return None
    return sync_to(ctx.ws, latest_head(ctx.config))


@contextlib.contextmanager
def data_turn(ctx, what: str) -> Iterator[list[str]]:
    """One data change across hosts: lock, sync to the newest head, change (the body), publish.

    Yields a list the body may read for what the sync did. Nothing is published when the body
    raises or leaves the data version as it found it.
    """
    from tasks import versioning

    if not enabled(ctx.config):
        yield []
        return
    url, project = ctx.config.shared.database_url, ctx.config.project
    with advisory_lock(url, f"kaizen:data:{project}", ctx.config.shared.lock_timeout, what) as held:
        ensure_schema(held.conn)
        head = read_head(held.conn, project)
        done = [line] if (line := sync_to(ctx.ws, head)) else []
        yield done
        version = versioning.data_version(ctx.ws)
        if version and (head is None or version != head.data_md5):
            held.confirm()
            publish(held.conn, project, (head.seq if head else 0) + 1, version, ctx.ws.dvc_file.read_text())


# --- quarantine in the shared bucket ------------------------------------------------------------


def upload_quarantine(ctx, batch_id: str) -> str | None:
    """Copy a quarantine entry to `<remote bucket>/<prefix>/quarantine/<batch>/`, so losing this
    disk loses no rejected batch. Only for an S3 data remote when scaled out."""
    from tasks.quarantine import entry_dir

    remote = ctx.config.data.remote
    if not enabled(ctx.config) or not remote.url.startswith("s3://"):
        return None
    import boto3

    parts = urlparse(remote.url)
    prefix = "/".join(p for p in (parts.path.strip("/"), "quarantine", batch_id) if p)
    s3 = boto3.client("s3", endpoint_url=remote.endpoint_url or None, region_name=remote.region or None)
    source = entry_dir(ctx.ws, batch_id)
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        s3.upload_file(str(path), parts.netloc, f"{prefix}/{path.relative_to(source).as_posix()}")
    return f"s3://{parts.netloc}/{prefix}/"
