"""MLflow tracking and registry: runs, model versions, aliases and the promotion ledger.

The ledger lives in the registry itself, as tags `kaizen.ledger.<seq>` on the registered
model, so it travels with the registry (SQLite here, Postgres when scaled out) and needs no
second store. Alias moves happen under a file lock that re-reads the champion first.
"""

from __future__ import annotations

import getpass
import json
import os
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock

from tasks.config import KaizenConfig
from tasks.workspace import Workspace
from tasks.errors import KaizenError

CHAMPION = "champion"
CHALLENGER = "challenger"
LEDGER_PREFIX = "kaizen.ledger."
SERVING_CODE = Path(__file__).resolve().parents[1] / "models" / "serving.py"


class RegistryError(KaizenError, RuntimeError):
    pass


class StaleChampionError(RegistryError):
    """The champion moved after the gate compared against it."""


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str
    run_id: str | None
    tags: dict[str, str]


@dataclass(frozen=True)
class LedgerEntry:
    seq: int
    action: str  # promote | manual-promote | forced-promote | rollback
    from_version: str | None
    to_version: str
    who: str
    when: str
    why: str


def tracking_uri(ws: Workspace, config: KaizenConfig) -> str:
    return config.registry.tracking_uri or f"sqlite:///{ws.mlflow_db}"


def connect(ws: Workspace, config: KaizenConfig):
    """Point MLflow at this workspace's store and return a client."""
    import mlflow
    from mlflow import MlflowClient

    ws.state.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri(ws, config)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(client, ws: Workspace, config: KaizenConfig, name: str | None = None) -> str:
    name = name or config.project
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(name, artifact_location=(ws.mlflow_artifacts / name).as_uri())


def _model_exists(client, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
        return True
    except MlflowException:
        return False


def get_alias(client, name: str, alias: str) -> ModelRef | None:
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    return ModelRef(name, str(mv.version), mv.run_id, dict(mv.tags))


def get_version(client, name: str, version: str) -> ModelRef:
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version(name, str(version))
    except MlflowException:
        raise RegistryError(f"model {name} has no version {version}") from None
    return ModelRef(name, str(mv.version), mv.run_id, dict(mv.tags))


def list_versions(client, name: str) -> list[ModelRef]:
    if not _model_exists(client, name):
        return []
    found = client.search_model_versions(f"name='{name}'")
    refs = [ModelRef(name, str(mv.version), mv.run_id, dict(mv.tags)) for mv in found]
    return sorted(refs, key=lambda r: int(r.version))


def download_model(client, ref: ModelRef, target: Path) -> Path:
    """Fetch the safetensors classifier directory of a registered version."""
    import mlflow

    source = client.get_model_version_download_uri(ref.name, ref.version)
    # pyfunc stores each artifact under artifacts/<basename of the logged directory>.
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{source}/artifacts", dst_path=str(target)))
    found = [p.parent for p in local.glob("*/model.safetensors")]
    if len(found) != 1:
        raise RegistryError(f"v{ref.version}: expected one safetensors classifier in {source}, found {len(found)}")
    return found[0]


def git_sha() -> str:
    """Commit of the kaizen code that ran (with -dirty when the tree has changes)."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def register_challenger(
    client,
    config: KaizenConfig,
    run_id: str,
    model_dir: Path,
    tags: dict[str, str],
    example_texts: list[str],
) -> ModelRef:
    """Log the classifier to the run, register it and point `challenger` at it."""
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    example = pd.DataFrame({"text": example_texts[:3] or ["example"]})
    output = pd.DataFrame({"label": [config.labels[0]] * len(example), "score": [0.5] * len(example)})
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(SERVING_CODE),
            artifacts={"classifier": str(model_dir)},
            signature=infer_signature(example, output),
            input_example=example,
            pip_requirements=[],  # served from the kaizen environment itself
        )
    mv = client.create_model_version(config.registry.model_name, info.model_uri, run_id=run_id, tags=tags) \
        if _model_exists(client, config.registry.model_name) else None
    if mv is None:
        client.create_registered_model(config.registry.model_name)
        mv = client.create_model_version(config.registry.model_name, info.model_uri, run_id=run_id, tags=tags)
    client.set_registered_model_alias(config.registry.model_name, CHALLENGER, mv.version)
    return ModelRef(config.registry.model_name, str(mv.version), run_id, dict(tags))


def read_ledger(client, name: str) -> list[LedgerEntry]:
    if not _model_exists(client, name):
        return []
    tags = client.get_registered_model(name).tags
    entries = [json.loads(v) for k, v in tags.items() if k.startswith(LEDGER_PREFIX)]
    return [LedgerEntry(**e) for e in sorted(entries, key=lambda e: e["seq"])]


def _who() -> str:
    try:
        return os.environ.get("KAIZEN_USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def move_champion(
    client,
    ws: Workspace,
    name: str,
    to_version: str,
    expected_champion: str | None,
    action: str,
    why: str,
) -> LedgerEntry:
    """Move `champion` to `to_version` if it still points at `expected_champion`; log it."""
    get_version(client, name, to_version)  # fails clearly on an unknown version
    ws.state.mkdir(parents=True, exist_ok=True)
    with FileLock(str(ws.promote_lock), timeout=120):
        current = get_alias(client, name, CHAMPION)
        current_version = current.version if current else None
        if current_version != expected_champion:
            raise StaleChampionError(
                f"champion is v{current_version}, but this decision was made against v{expected_champion}; "
                "nothing was moved"
            )
        ledger = read_ledger(client, name)
        entry = LedgerEntry(
            seq=(ledger[-1].seq + 1) if ledger else 1,
            action=action,
            from_version=current_version,
            to_version=str(to_version),
            who=_who(),
            when=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            why=why,
        )
        # Ledger first: a crash between the two writes leaves a recorded intent, never an
        # unrecorded move.
        client.set_registered_model_tag(name, f"{LEDGER_PREFIX}{entry.seq:06d}", json.dumps(entry.__dict__))
        client.set_registered_model_alias(name, CHAMPION, str(to_version))
        client.set_model_version_tag(name, str(to_version), "kaizen.promoted_at", entry.when)
    return entry


def previous_champion(client, name: str) -> str:
    """The version that was champion before the current one.

    Rollback entries are skipped, so rolling back twice walks further back in time
    instead of undoing the first rollback.
    """
    current = get_alias(client, name, CHAMPION)
    if current is None:
        raise RegistryError(f"model {name} has no champion to roll back from")
    for entry in reversed(read_ledger(client, name)):
        if entry.to_version == current.version and entry.action != "rollback":
            if entry.from_version is None:
                raise RegistryError(f"v{current.version} is the first champion; there is nothing to roll back to")
            return entry.from_version
    raise RegistryError(f"the ledger has no record of how v{current.version} became champion")


def manual_promotion_problem(ref: ModelRef, current_champion: str | None) -> str | None:
    """Why promoting `ref` by hand is not backed by its gate (None when it is).

    A version's gate verdict only counts against the champion it was compared with.
    """
    verdict = ref.tags.get("kaizen.gate_verdict")
    if verdict != "pass":
        return f"its gate verdict is {verdict or 'missing'}"
    compared = ref.tags.get("kaizen.parent_version") or None
    if compared != current_champion:
        return f"its gate compared it with v{compared or '-'}, but the champion is now v{current_champion or '-'}"
    return None
