"""Turn a labelled file into an immutable batch: `data/batches/<batch_id>.parquet`.

The split of every row comes from a hash of its normalised text, so a duplicate always lands
in the same split as its twin and the test splits never leak into training.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from tasks.config import KaizenConfig, SplitConfig
from tasks.errors import KaizenError, StorageError
from tasks.versioning import changing_data, check_remote
from tasks.workspace import Workspace

# Every batch holds these besides its family's own columns (tasks/families/__init__.py).
SHARED_COLUMNS = ("text", "label")
FORMATS = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
BATCH_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_SPACE = re.compile(r"\s+")


class IngestError(KaizenError, ValueError):
    """A file that cannot become a batch; the message names the file and the problem."""


@dataclass(frozen=True)
class BatchInfo:
    batch_id: str
    path: str
    rows: int
    sha256: str
    split_counts: dict[str, int]
    source: str


# validation.max_file_bytes when the caller has no config (`kaizen validate` reads through
# tasks.validate.validate_file, which does not pass one yet).
DEFAULT_MAX_FILE_BYTES: int = KaizenConfig.model_fields["validation"].default.max_file_bytes


def _human_bytes(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    value = float(size)
    for unit in ("KiB", "MiB"):
        value /= 1024
        if value < 1024:
            return f"{value:.1f} {unit}"
    return f"{value / 1024:.1f} GiB"


def check_file_size(path: Path, size: int, max_bytes: int) -> None:
    """Refuse, from its size alone, a file too large to load: reading it would exhaust memory
    long before validation could say anything useful about it."""
    if size > max_bytes:
        raise IngestError(
            f"{path}: file is {_human_bytes(size)} ({size} bytes), larger than validation.max_file_bytes = "
            f"{_human_bytes(max_bytes)} ({max_bytes} bytes); refused without reading it"
        )


def read_table(path: Path | str, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> pd.DataFrame:
    """Read CSV, Parquet or JSON Lines; every failure is an IngestError naming the file.

    A file over `max_bytes` is refused from its size before a byte of it is read.
    """
    path = Path(path)
    if not path.exists():
        raise IngestError(f"{path}: no such file")
    if path.is_dir():
        raise IngestError(f"{path}: is a directory, expected a CSV, Parquet or JSONL file")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        known = ", ".join(sorted(FORMATS))
        raise IngestError(f"{path}: unknown format {path.suffix or '(no extension)'!r}; expected one of {known}")
    size = path.stat().st_size
    if size == 0:
        raise IngestError(f"{path}: file is empty")
    check_file_size(path, size, max_bytes)
    try:
        if kind == "csv":
            # keep_default_na=False: the literal text "NA" or "null" is a valid sentence.
            # Undecodable bytes become U+FFFD, which validation counts as encoding debris
            # instead of refusing the whole file on the first bad byte.
            frame = pd.read_csv(
                path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8", encoding_errors="replace"
            )
        elif kind == "parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_json(path, lines=True, dtype=False)
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise IngestError(f"{path}: cannot be read as {kind}: {first}") from None
    return frame


def check_columns(frame: pd.DataFrame, source: str, required: tuple[str, ...] = SHARED_COLUMNS) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        found = ", ".join(map(str, frame.columns)) or "none"
        raise IngestError(f"{source}: missing required column(s) {', '.join(missing)} (found: {found})")
    if len(frame) == 0:
        raise IngestError(f"{source}: has a header but no rows")


def normalise_text(text: str) -> str:
    """The form used for split hashing and duplicate detection."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip().lower()


def assign_split(normalised: str, split: SplitConfig) -> str:
    digest = hashlib.sha256(normalised.encode("utf-8")).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64
    if point < split.train:
        return "train"
    if point < split.train + split.validation:
        return "validation"
    return "test"


def prepare_batch(frame: pd.DataFrame, config: KaizenConfig, source: str) -> pd.DataFrame:
    """Keep the family's columns (with `text` and `label`, see tasks/families) and the
    configured slice columns; add the deterministic split."""
    from tasks.families import family_of, text_column

    family = family_of(config.task)
    check_columns(frame, source, family.COLUMNS)
    # Nulls stay nulls so validation can name them; everything else becomes a string.
    batch = family.prepare(frame.reset_index(drop=True))
    for column in [c for c in config.data.slice_columns if c in frame.columns and c not in batch.columns]:
        batch[column] = text_column(frame.reset_index(drop=True), column)
    norm = batch["text"].map(lambda t: normalise_text(t) if isinstance(t, str) else "")
    batch["split"] = norm.map(lambda t: assign_split(t, config.data.split))
    return batch.reset_index(drop=True)


def content_hash(batch: pd.DataFrame) -> str:
    """Order-sensitive hash of the batch's content (not of its parquet bytes)."""
    digest = hashlib.sha256()
    for row in batch.itertuples(index=False):
        digest.update(json.dumps(list(row), ensure_ascii=False, default=str).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def make_batch_id(sha256: str, now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S")
    return f"b{stamp}-{sha256[:8]}"


def check_batch_id(batch_id: str) -> None:
    if not BATCH_ID.match(batch_id):
        raise IngestError(f"batch id {batch_id!r} is not allowed: use letters, digits, '.', '_' or '-' (max 100)")


def read_manifest(ws: Workspace) -> list[dict]:
    if not ws.manifest.exists():
        return []
    return json.loads(ws.manifest.read_text())


def batch_ids(ws: Workspace) -> list[str]:
    """Ingested batches in ingestion order."""
    return [entry["batch_id"] for entry in read_manifest(ws)]


class AlreadyIngested(IngestError):
    """The file's content is already a batch: ingesting it again is a no-op, not a failure, so a
    re-sent file or a command re-run after a crash converges instead of erroring."""

    def __init__(self, source: str, batch_id: str):
        self.batch_id = batch_id
        super().__init__(f"{source}: this content was already ingested as batch {batch_id}; nothing to do")


def check_new_batch(ws: Workspace, batch_id: str, sha256: str, source: str = "file") -> None:
    for entry in read_manifest(ws):
        if entry["sha256"] == sha256:
            raise AlreadyIngested(source, entry["batch_id"])
        if entry["batch_id"] == batch_id:
            raise IngestError(f"batch {batch_id} already exists; batches are immutable, choose another id")


def write_atomic(path: Path, write) -> None:
    """Call write(tmp) on a temporary file beside `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except StorageError:
        raise
    except OSError as exc:  # a full disk: one line naming the file, no traceback
        raise StorageError(path, exc) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_batch(ws: Workspace, batch_id: str, batch: pd.DataFrame, sha256: str, source: str) -> BatchInfo:
    """Write the parquet file and append to the manifest, both atomically."""
    path = ws.batch_path(batch_id)
    if path.exists():
        raise IngestError(f"batch {batch_id} already exists at {path}")
    write_atomic(path, lambda tmp: batch.to_parquet(tmp, index=False))
    entry = {
        "batch_id": batch_id,
        "sha256": sha256,
        "rows": int(len(batch)),
        "source": source,
        "ingested_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    manifest = read_manifest(ws) + [entry]
    write_atomic(ws.manifest, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=1)))
    counts = batch["split"].value_counts().to_dict()
    return BatchInfo(batch_id, str(path), len(batch), sha256, {k: int(v) for k, v in counts.items()}, source)


def remove_batch(ws: Workspace, batch_id: str) -> None:
    """Undo write_batch (used when versioning the batch fails)."""
    ws.batch_path(batch_id).unlink(missing_ok=True)
    manifest = [e for e in read_manifest(ws) if e["batch_id"] != batch_id]
    write_atomic(ws.manifest, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=1)))


def describe_batch(ws: Workspace, batch_id: str) -> BatchInfo:
    """The BatchInfo of a batch already in data/ (what ingesting it again reports)."""
    entry = next(e for e in read_manifest(ws) if e["batch_id"] == batch_id)
    counts = load_batch(ws, batch_id)["split"].value_counts().to_dict()
    path = ws.batch_path(batch_id)
    split_counts = {k: int(v) for k, v in counts.items()}
    return BatchInfo(batch_id, str(path), entry["rows"], entry["sha256"], split_counts, entry["source"])


def load_batch(ws: Workspace, batch_id: str) -> pd.DataFrame:
    path = ws.batch_path(batch_id)
    if not path.exists():
        raise IngestError(f"batch {batch_id}: {path} is missing (run `dvc pull`?)")
    return pd.read_parquet(path)


@dataclass(frozen=True)
class StagedBatch:
    """A prepared batch waiting for validation, outside data/."""

    batch_id: str
    path: str
    rows: int
    sha256: str
    source: str
    extra_columns: list[str]


def extra_columns(frame: pd.DataFrame, config: KaizenConfig) -> list[str]:
    # `split` is ours (a quarantined batch being re-submitted carries it); it is recomputed.
    from tasks.families import family_of

    known = set(SHARED_COLUMNS) | set(family_of(config.task).COLUMNS) | set(config.data.slice_columns) | {"split"}
    return [str(c) for c in frame.columns if c not in known]


def check_input(
    ws: Workspace, config: KaizenConfig, file: Path | str, batch_id: str | None = None
) -> tuple[pd.DataFrame, str, str, list[str]]:
    """Everything about a file that can be refused before any work starts; writes nothing.

    That includes the data remote the batch will be pushed to (`check_remote`).

    Returns the prepared batch, its content hash, its batch id and the file's extra columns.
    """
    if batch_id is not None:
        check_batch_id(batch_id)
    raw = read_table(file, config.validation.max_file_bytes)
    batch = prepare_batch(raw, config, str(file))
    sha = content_hash(batch)
    batch_id = batch_id or make_batch_id(sha)
    check_new_batch(ws, batch_id, sha, str(file))
    # Last, so a bad file is refused without a network call; still before anything is written,
    # so a misconfigured remote never leaves a staged or half-versioned batch behind.
    check_remote(ws, config.data.remote)
    return batch, sha, batch_id, extra_columns(raw, config)


def stage_file(ws: Workspace, config: KaizenConfig, file: Path | str, batch_id: str | None = None) -> StagedBatch:
    """Read and prepare a file; refuse duplicates. Nothing under data/ is touched."""
    source = str(file)
    batch, sha, batch_id, extra = check_input(ws, config, file, batch_id)
    staged = ws.state / "staging" / f"{batch_id}.parquet"
    write_atomic(staged, lambda tmp: batch.to_parquet(tmp, index=False))
    return StagedBatch(batch_id, str(staged), len(batch), sha, source, extra)


def accept_batch(ws: Workspace, staged: StagedBatch, commit, config: KaizenConfig) -> tuple[BatchInfo, str]:
    """Move a validated batch into data/, add it to the pool and version both with `commit`
    (dvc add + push).

    If versioning fails the batch is taken out again and data.dvc, the manifest and the pool
    restored, so the data version on disk never names a batch the remote does not hold.
    """
    from tasks import pool

    batch = pd.read_parquet(staged.path)
    kept = (ws.dvc_file, ws.manifest, pool.pool_path(ws), pool.strata_path(ws))
    saved = {p: (p.read_bytes() if p.exists() else None) for p in kept}
    with changing_data(ws):  # a kill in here is undone (or finished) by the next command
        info = write_batch(ws, staged.batch_id, batch, staged.sha256, staged.source)
        try:
            pool.add_batch(ws, staged.batch_id, batch, config)
            version = commit(ws)
        except Exception:
            ws.batch_path(staged.batch_id).unlink(missing_ok=True)
            for path, content in saved.items():
                if content is None:
                    path.unlink(missing_ok=True)
                else:
                    path.write_bytes(content)
            raise
    Path(staged.path).unlink(missing_ok=True)
    return info, version


def withdraw_batch(ws: Workspace, batch_id: str, reason: str, report_json: str, config: KaizenConfig) -> Path:
    """Move an ingested batch out of data/ into quarantine (e.g. after the gate rejected it).

    The data version that held it stays in the DVC remote, so the rejected model's lineage can
    still be restored; the batch itself can be re-submitted after review.
    """
    from tasks import pool, quarantine

    entry = next((e for e in read_manifest(ws) if e["batch_id"] == batch_id), {})
    target = quarantine.put_file(
        ws, batch_id, ws.batch_path(batch_id), report_json, f"{entry.get('source', '?')}\nwithdrawn: {reason}"
    )
    remove_batch(ws, batch_id)
    pool.remove_batch(ws, batch_id, config)
    return target
