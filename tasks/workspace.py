"""Where a kaizen workspace keeps things.

`data/` is versioned by DVC (its md5 in `data.dvc` is the data version); everything under
`.kaizen/` is local state: the MLflow store, the default DVC remote, the feature cache,
quarantine, run scratch space.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def at(cls, root: Path | str | None = None) -> "Workspace":
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
    def last_run(self) -> Path:
        return self.state / "last_run.json"

    def batch_path(self, batch_id: str) -> Path:
        return self.batches / f"{batch_id}.parquet"
