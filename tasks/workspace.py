"""Where a kaizen workspace keeps things.

`data/` is versioned by DVC (its md5 in `data.dvc` is the data version); everything under
`.kaizen/` is local state: the MLflow store, the default DVC remote, the feature cache,
quarantine, run scratch space.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

# A cycle on a big batch can run for hours; a second command waits for it rather than fail.
WAIT_SECONDS = 24 * 3600
# Workspaces whose turn this process already holds: a flow started by a command that holds the
# turn runs inside it (flock locks are per open file, so taking it again would wait forever).
_HELD: set[Path] = set()


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def at(cls, root: Path | str | None = None) -> Workspace:
        chosen = root if root is not None else os.environ.get("KAIZEN_WORKSPACE", ".")
        return cls(Path(chosen).resolve())

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def batches(self) -> Path:
        return self.data / "batches"

    @property
    def manifest(self) -> Path:
        return self.data / "manifest.json"

    @property
    def dvc_file(self) -> Path:
        return self.root / "data.dvc"

    @property
    def state(self) -> Path:
        return self.root / ".kaizen"

    @property
    def dvc_remote(self) -> Path:
        return self.state / "dvc-remote"

    @property
    def quarantine(self) -> Path:
        return self.state / "quarantine"

    @property
    def features(self) -> Path:
        return self.state / "features"

    @property
    def runs(self) -> Path:
        return self.state / "runs"

    @property
    def reports(self) -> Path:
        return self.state / "reports"

    @property
    def mlflow_db(self) -> Path:
        return self.state / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.state / "mlartifacts"

    @property
    def promote_lock(self) -> Path:
        return self.state / "promote.lock"

    @property
    def command_lock(self) -> Path:
        return self.state / "workspace.lock"

    @property
    def last_run(self) -> Path:
        return self.state / "last_run.json"

    def batch_path(self, batch_id: str) -> Path:
        return self.batches / f"{batch_id}.parquet"


@contextlib.contextmanager
def exclusive(
    ws: Workspace, command: str, on_wait: Callable[[str], None], timeout: float = WAIT_SECONDS
) -> Iterator[None]:
    """One writing command per workspace at a time; a second one waits its turn.

    Two commands started together in one workspace otherwise collide in three places that
    each assume a single writer: Prefect's SQLite home (its migrations), DVC's repo lock and
    the manifest. Waiting is what a user expects of `kaizen ingest a & kaizen ingest b`.
    """
    from filelock import FileLock, Timeout

    from tasks.errors import KaizenError

    if ws.root in _HELD:
        yield
        return
    ws.state.mkdir(parents=True, exist_ok=True)
    lock, owner = FileLock(str(ws.command_lock)), ws.state / "workspace.lock.owner"
    try:
        lock.acquire(timeout=0)
    except Timeout:
        holder = owner.read_text().strip() if owner.exists() else "another kaizen command"
        on_wait(f"kaizen: waiting for {holder} to finish in {ws.root}")
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            raise KaizenError(f"{holder} still holds {ws.root} after {timeout:.0f}s; nothing was done") from None
    try:
        _HELD.add(ws.root)
        owner.write_text(f"`kaizen {command}` (pid {os.getpid()})\n")
        yield
    finally:
        _HELD.discard(ws.root)
        owner.unlink(missing_ok=True)
        lock.release()
