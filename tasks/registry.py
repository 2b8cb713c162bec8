"""MLflow tracking and registry: runs, model versions, aliases and the promotion ledger.

The ledger lives in the registry itself, as tags `kaizen.ledger.<seq>` on the registered
model, so it travels with the registry (SQLite here, Postgres when scaled out) and needs no
second store. Alias moves happen under a file lock that re-reads the champion first.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import random
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from filelock import FileLock

from tasks.config import KaizenConfig
from tasks.errors import KaizenError
from tasks.lineage import Lineage, tag
from tasks.workspace import Workspace

CHAMPION = "champion"
CHALLENGER = "challenger"
CANDIDATE = "candidate"  # a challenger held back as underpowered, gathering evidence
# Ledger actions that made a version champion (the ledger also records rollbacks and candidate events).
PROMOTIONS = ("promote", "manual-promote", "forced-promote", "approve")
CHAMPION_MOVES = (*PROMOTIONS, "rollback")
LEDGER_PREFIX = "kaizen.ledger."
PROMOTED_AT_TAG = "kaizen.promoted_at"
# The pyfunc definition MLflow executes to rebuild a model ("model from code": no pickle).
SERVING_CODE = Path(__file__).resolve().parent / "serving.py"
WEIGHTS_FILE = "model.safetensors"
# Formats that torch, pickle or joblib deserialise by running code. A kaizen model is
# safetensors plus JSON/text tokenizer files, so any of these in one was put there by someone else.
PICKLE_SUFFIXES = (".bin", ".pkl", ".pickle", ".pt", ".pth", ".ckpt", ".joblib")


class RegistryError(KaizenError, RuntimeError):
    pass


class StaleChampionError(RegistryError):
    """The champion moved after the gate compared against it."""


class TamperedModelError(RegistryError):
    """A registered version's artifacts are not what was registered; nothing was loaded."""


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str
    run_id: str | None
    tags: dict[str, str]
    created_ms: int = 0


@dataclass(frozen=True)
class LedgerEntry:
    seq: int
    # promote | manual-promote | forced-promote | approve | rollback | reject | hold | evidence | drop-candidate
    action: str
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
    if tracking_uri(ws, config).startswith(("http://", "https://")):
        # A tracking server decides where artifacts go (its proxied store, S3 when scaled out);
        # a local path would be unreadable from every other host.
        return client.create_experiment(name)
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
    return _ref(mv)


def get_version(client, name: str, version: str) -> ModelRef:
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version(name, str(version))
    except MlflowException:
        raise RegistryError(f"model {name} has no version {version}") from None
    return _ref(mv)


def _ref(mv) -> ModelRef:
    return ModelRef(mv.name, str(mv.version), mv.run_id, dict(mv.tags), int(mv.creation_timestamp or 0))


def list_versions(client, name: str, where: str = "") -> list[ModelRef]:
    """Every version (or those matching the extra filter `where`), oldest first."""
    if not _model_exists(client, name):
        return []
    query = f"name='{name}'" + (f" and {where}" if where else "")
    refs, token = [], None
    while True:
        page = client.search_model_versions(query, max_results=1000, page_token=token)
        refs += [_ref(mv) for mv in page]
        token = getattr(page, "token", None)
        if not token:
            break
    return sorted(refs, key=lambda r: int(r.version))


def versions_newest_first(client, name: str, page_size: int = 50):
    """Versions from the newest back, fetched a page at a time, so a reader that stops early
    (the planner looking for recent cycles) does not fetch every version ever registered."""
    token = None  # a missing model's search is an empty page: no existence check needed
    while True:
        page = client.search_model_versions(
            f"name='{name}'", max_results=page_size, order_by=["version_number DESC"], page_token=token
        )
        yield from (_ref(mv) for mv in page)
        token = getattr(page, "token", None)
        if not token:
            return


def download_model(client, ref: ModelRef, target: Path) -> Path:
    """Fetch the safetensors classifier directory of a registered version, verified: no
    pickle-format file anywhere in its artifacts, and weights with the sha256 it was registered with."""
    import mlflow

    source = client.get_model_version_download_uri(ref.name, ref.version)
    # pyfunc stores each artifact under artifacts/<basename of the logged directory>.
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{source}/artifacts", dst_path=str(target)))
    who = f"v{ref.version}"
    # Before anything else: a pickle swapped in for the weights must be named, not "not found".
    refuse_pickles(local, who)
    found = [p.parent for p in local.glob(f"*/{WEIGHTS_FILE}")]
    if len(found) != 1:
        raise RegistryError(f"{who}: expected one safetensors classifier in {source}, found {len(found)}")
    verify_weights(found[0], Lineage.from_tags(ref.tags).weights_sha256, who)
    return found[0]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def refuse_pickles(root: Path, who: str) -> None:
    """Raise naming every pickle-format file under `root` (a loader that finds one might run it)."""
    found = sorted(p for p in Path(root).rglob("*") if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES)
    if found:
        names = ", ".join(str(p.relative_to(root)) for p in found)
        raise TamperedModelError(
            f"{who}: {names}: pickle-format file in the model's artifacts (loading it can run code); refusing to load"
        )


def verify_weights(classifier_dir: Path, expected_sha256: str, who: str) -> None:
    """Raise unless `classifier_dir/model.safetensors` has the sha256 recorded at registration."""
    if not expected_sha256:
        raise TamperedModelError(
            f"{who}: no recorded weights hash (registered before kaizen recorded one), so its "
            f"{WEIGHTS_FILE} cannot be verified; refusing to load"
        )
    weights = Path(classifier_dir) / WEIGHTS_FILE
    if not weights.is_file():
        raise TamperedModelError(f"{who}: {WEIGHTS_FILE} is missing from its artifacts; refusing to load")
    actual = file_sha256(weights)
    if actual != expected_sha256:
        raise TamperedModelError(
            f"{who}: {WEIGHTS_FILE} sha256 {actual[:12]}… differs from the registered "
            f"{expected_sha256[:12]}…; refusing to load"
        )


def download_version(client, name: str, version: str, target: Path) -> Path:
    """download_model for a version number (one call, so a flow retries both as one I/O step)."""
    return download_model(client, get_version(client, name, version), target)


def git_sha() -> str:
    """Commit of the kaizen code that ran (with -dirty when the tree has changes)."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        )
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
    """Log the classifier to the run, register it and point `challenger` at it.

    The truncation length travels with the model (`model_config`), so the pyfunc and
    `kaizen predict` cut long texts where training did, whatever the config says later.
    The weights' sha256 goes both into the version's tags (what `download_model` checks) and
    into `model_config` (what the pyfunc checks, without needing the registry).
    """
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    refuse_pickles(model_dir, "challenger")  # never publish what every loader would refuse
    sha = file_sha256(Path(model_dir) / WEIGHTS_FILE)
    tags = {**tags, tag("weights_sha256"): sha}

    from tasks.families import family_of

    family = family_of(config.task)
    example = pd.DataFrame({"text": example_texts[:3] or ["example"]})
    output = family.example_output(list(config.labels), len(example))
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(SERVING_CODE),
            artifacts={"classifier": str(model_dir)},
            model_config={"max_length": config.model.max_length, "weights_sha256": sha, "task": config.task},
            # Generation settings travel as MLflow params (`predict(frame, params=...)`).
            signature=infer_signature(example, output, params=dict(family.PREDICT_PARAMS) or None),
            input_example=example,
            pip_requirements=[],  # served from the kaizen environment itself
        )
    name = config.registry.model_name
    # The store named in an error (a client stub in a test may lack the private attribute).
    store = getattr(client, "_registry_uri", None) or mlflow.get_registry_uri()
    # Other processes may be registering against the same store right now (see _with_retries).
    _with_retries(lambda: _ensure_registered_model(client, name), store, f"creating registered model {name}")
    mv = _with_retries(
        lambda: client.create_model_version(name, info.model_uri, run_id=run_id, tags=tags, model_id=info.model_id),
        store,
        f"creating a version of {name}",
    )
    _with_retries(
        lambda: client.set_registered_model_alias(name, CHALLENGER, mv.version),
        store,
        f"pointing {name}@{CHALLENGER} at v{mv.version}",
    )
    return ModelRef(name, str(mv.version), run_id, dict(tags))


# Registry writes that meet another writer: SQLite's lock outlasting MLflow's busy_timeout,
# MLflow's own version-number retries (3, on IntegrityError) running out under contention, or
# two writers racing MLflow's read-then-insert of an alias row (both see no row, one insert
# loses on the unique key). Each write is one transaction that rolled back, so retrying it is
# safe: the alias retry finds the winner's row and updates it.
_T = TypeVar("_T")
_TRANSIENT = (
    "database is locked",
    "database is busy",
    "model version creation error",
    "unique constraint failed",  # SQLite
    "duplicate key value violates unique constraint",  # PostgreSQL
)
REGISTRY_TRIES = 8
_BACKOFF_BASE_S = 0.05
_BACKOFF_CAP_S = 2.0


def _is_transient(exc: Exception) -> bool:
    text = str(exc).lower()
    return any(marker in text for marker in _TRANSIENT)


def _ensure_registered_model(client, name: str) -> None:
    """Create the registered model unless it exists; a concurrent creator winning the race
    between our check and our create is success, not an error."""
    from mlflow.exceptions import MlflowException

    if _model_exists(client, name):
        return
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS" and "already exists" not in str(exc).lower():
            raise


def _with_retries(write: Callable[[], _T], store: str, what: str, tries: int = REGISTRY_TRIES) -> _T:
    """Run one registry write, retrying transient lock contention with full-jitter exponential
    backoff (jitter, so writers that collided once do not collide again in lockstep); after
    `tries` attempts raise a RegistryError naming the store. Other failures propagate at once."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import OperationalError

    for attempt in range(1, tries + 1):
        try:
            return write()
        except (MlflowException, OperationalError) as exc:
            if not _is_transient(exc):
                raise
            if attempt == tries:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise RegistryError(
                    f"registry {store}: {what} failed after {tries} tries (another writer held the store): {first}"
                ) from exc
            time.sleep(random.uniform(0, min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2**attempt)))
    raise AssertionError("unreachable")  # the loop returns or raises


def read_ledger(client, name: str) -> list[LedgerEntry]:
    from mlflow.exceptions import MlflowException

    try:  # one call: the model's tags hold the ledger (a missing model has none)
        tags = client.get_registered_model(name).tags
    except MlflowException:
        return []
    entries = [json.loads(v) for k, v in tags.items() if k.startswith(LEDGER_PREFIX)]
    return [LedgerEntry(**e) for e in sorted(entries, key=lambda e: e["seq"])]


def current_user() -> str:
    try:
        return os.environ.get("KAIZEN_USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def next_ledger_entry(
    client,
    name: str,
    action: str,
    from_version: str | None,
    to_version: str,
    why: str,
    who: str | None = None,
    ledger: list[LedgerEntry] | None = None,
) -> LedgerEntry:
    ledger = read_ledger(client, name) if ledger is None else ledger
    return LedgerEntry(
        seq=(ledger[-1].seq + 1) if ledger else 1,
        action=action,
        from_version=from_version,
        to_version=to_version,
        who=who or current_user(),
        when=datetime.now(UTC).isoformat(timespec="seconds"),
        why=why,
    )


def write_ledger_entry(client, name: str, entry: LedgerEntry) -> None:
    client.set_registered_model_tag(name, f"{LEDGER_PREFIX}{entry.seq:06d}", json.dumps(entry.__dict__))


def _turn(guard):
    """The lock that orders champion moves and ledger entries: a workspace means its file lock
    (one host); anything else is a factory of a shared lock (tasks/shared.py: champion_guard)."""
    if isinstance(guard, Workspace):
        guard.state.mkdir(parents=True, exist_ok=True)
        return FileLock(str(guard.promote_lock), timeout=120)
    return guard()


def _confirm(held) -> None:
    # A shared lock can be lost with its connection; a file lock cannot.
    confirm = getattr(held, "confirm", None)
    if callable(confirm):
        confirm()


def record_event(
    ws,
    client,
    name: str,
    action: str,
    from_version: str | None,
    to_version: str,
    why: str,
    who: str | None = None,
) -> LedgerEntry:
    """A ledger entry that moves no alias (a challenger held as candidate, a look at its evidence),
    written under the same lock as champion moves so sequence numbers never collide.
    `ws` is the workspace or a shared lock (see `_turn`)."""
    with _turn(ws) as held:
        entry = next_ledger_entry(client, name, action, from_version, to_version, why, who)
        _confirm(held)
        write_ledger_entry(client, name, entry)
    return entry


def move_champion(
    client,
    ws,
    name: str,
    to_version: str,
    expected_champion: str | None,
    action: str,
    why: str,
    who: str | None = None,
) -> LedgerEntry:
    """Move `champion` to `to_version` if it still points at `expected_champion`; log it.

    `ws` is the workspace (a file lock) or a shared lock (see `_turn`): the re-read and the
    write happen under it, so this is a compare-and-set for every process that takes it."""
    get_version(client, name, to_version)  # fails clearly on an unknown version
    with _turn(ws) as held:
        ledger = read_ledger(client, name)  # read once: it grows with every move ever made
        _finish_move(client, name, ledger)  # a move a killed process recorded but did not make comes first
        current = get_alias(client, name, CHAMPION)
        current_version = current.version if current else None
        if current_version != expected_champion:
            raise StaleChampionError(
                f"champion is v{current_version}, but this decision was made against v{expected_champion}; "
                "nothing was moved"
            )
        entry = next_ledger_entry(client, name, action, current_version, str(to_version), why, who, ledger)
        _confirm(held)
        # Ledger first: a crash between the two writes leaves a recorded intent, never an
        # unrecorded move.
        write_ledger_entry(client, name, entry)
        _apply_move(client, name, entry)
    return entry


def _apply_move(client, name: str, entry: LedgerEntry) -> None:
    client.set_registered_model_alias(name, CHAMPION, entry.to_version)
    client.set_model_version_tag(name, entry.to_version, PROMOTED_AT_TAG, entry.when)


def last_move(ledger: list[LedgerEntry]) -> LedgerEntry | None:
    """The ledger's last entry that moved `champion` (holds and looks move nothing)."""
    return next((e for e in reversed(ledger) if e.action in CHAMPION_MOVES), None)


def unfinished_move(client, name: str, ledger: list[LedgerEntry] | None = None) -> LedgerEntry | None:
    """The last recorded champion move, if a killed process wrote it but did not finish it:
    the alias still points where the move started, or the promoted-at tag was not written."""
    move = last_move(read_ledger(client, name) if ledger is None else ledger)
    if move is None:
        return None
    current = get_alias(client, name, CHAMPION)
    current_version = current.version if current else None
    if current_version == move.from_version and move.from_version != move.to_version:
        return move
    if current is not None and current_version == move.to_version and current.tags.get(PROMOTED_AT_TAG) != move.when:
        return move
    return None  # done, or moved by something other than kaizen (`kaizen doctor` reports that)


def _finish_move(client, name: str, ledger: list[LedgerEntry] | None = None) -> LedgerEntry | None:
    move = unfinished_move(client, name, ledger)
    if move is not None:
        _apply_move(client, name, move)
    return move


def finish_interrupted_move(client, ws, name: str) -> LedgerEntry | None:
    """Complete a champion move that a killed process recorded in the ledger but did not make.

    The ledger entry is written first (see `move_champion`), so it is the intent of record; the
    next command carries it out, under the same lock as every move."""
    if not _model_exists(client, name):
        return None
    with _turn(ws):
        return _finish_move(client, name)


def previous_champion(client, name: str) -> str:
    """The version that was champion before the current one.

    Rollback entries are skipped, so rolling back twice walks further back in time
    instead of undoing the first rollback.
    """
    current = get_alias(client, name, CHAMPION)
    if current is None:
        raise RegistryError(f"model {name} has no champion to roll back from")
    for entry in reversed(read_ledger(client, name)):
        if entry.to_version == current.version and entry.action in PROMOTIONS:
            if entry.from_version is None:
                raise RegistryError(f"v{current.version} is the first champion; there is nothing to roll back to")
            return entry.from_version
    raise RegistryError(f"the ledger has no record of how v{current.version} became champion")
