"""Version `data/` with DVC: the md5 recorded in `data.dvc` is the data version."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn
from urllib.parse import urlparse

import yaml

from tasks.errors import KaizenError
from tasks.workspace import Workspace

if TYPE_CHECKING:
    from dvc.repo import Repo

    from tasks.config import RemoteConfig

DEFAULT_REMOTE = "local"


class VersioningError(KaizenError, RuntimeError):
    pass


@contextlib.contextmanager
def _quiet_dvc():
    """DVC prints and logs git hints ("To track the changes with git...") meant for its CLI."""
    from dvc.ui import ui

    enabled = getattr(ui, "_enabled", True)
    dvc_logger = logging.getLogger("dvc")
    level = dvc_logger.level
    ui._enabled = False
    dvc_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        ui._enabled = enabled
        dvc_logger.setLevel(level)


def _git_toplevel(path: Path) -> Path | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=path, capture_output=True, text=True)
    except OSError:
        return None
    return Path(out.stdout.strip()).resolve() if out.returncode == 0 else None


S3_REMOTE = "s3"


def _ignored_by_git(path: Path) -> bool:
    """A directory git ignores (e.g. `.kaizen/backtests/...` inside a clone) cannot be a DVC
    subdirectory repo of that git repository: `dvc init --subdir` refuses it."""
    try:
        out = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=path, capture_output=True)
    except OSError:
        return False
    return out.returncode == 0


def _scm_root(path: Path) -> Path | None:
    """The git repository DVC should cooperate with, or None to run DVC without git."""
    top = _git_toplevel(path)
    return None if top is None or _ignored_by_git(path) else top


def init_repo(ws: Workspace, remote=None) -> None:
    """DVC repo in the workspace (inside git when there is one).

    `remote` is the config's `data.remote` section: with a URL, an S3 (or S3-compatible,
    via endpoint_url) remote becomes the default; otherwise a local directory under .kaizen/.
    Credentials never enter .dvc/config: DVC's S3 client takes them from the boto3 chain
    (environment, ~/.aws, instance roles) or from .dvc/config.local, which git ignores.
    """
    from dvc.repo import Repo

    ws.root.mkdir(parents=True, exist_ok=True)
    if not (ws.root / ".dvc").exists():
        top = _scm_root(ws.root)
        with _quiet_dvc():
            Repo.init(str(ws.root), no_scm=top is None, subdir=top is not None and top != ws.root)
    repo = Repo(str(ws.root))
    with repo.config.edit() as conf:
        conf["core"]["analytics"] = False
        if remote is not None and remote.url:
            settings = {"url": remote.url}
            if remote.endpoint_url:
                settings["endpointurl"] = remote.endpoint_url
            if remote.region:
                settings["region"] = remote.region
            conf["remote"][S3_REMOTE] = settings
            conf["core"]["remote"] = S3_REMOTE
        elif not conf["core"].get("remote") or conf["core"].get("remote") == S3_REMOTE:
            # DVC reads a relative path here against the process's cwd and stores it relative
            # to .dvc/ ("../.kaizen/dvc-remote"), so a committed config stays valid in any clone.
            conf["remote"][DEFAULT_REMOTE] = {"url": os.path.relpath(ws.dvc_remote, Path.cwd())}
            conf["core"]["remote"] = DEFAULT_REMOTE
    ws.dvc_remote.mkdir(parents=True, exist_ok=True)
    ws.batches.mkdir(parents=True, exist_ok=True)


def init_workspace(ws: Workspace, config) -> None:
    """`kaizen init`: the DVC repo and remote, data/, and a kaizen.yaml with every default."""
    from tasks.config import CONFIG_FILE

    init_repo(ws, config.data.remote)
    config_path = ws.root / CONFIG_FILE
    if not config_path.exists():
        config_path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


def data_version(ws: Workspace) -> str | None:
    """The md5 of `data/` as recorded in `data.dvc` (None before the first `dvc add`)."""
    if not ws.dvc_file.exists():
        return None
    outs = (yaml.safe_load(ws.dvc_file.read_text()) or {}).get("outs") or []
    return outs[0].get("md5") if outs else None


def remote_settings(ws: Workspace) -> dict[str, str]:
    """The default remote's settings, a local path made absolute (usable from anywhere)."""
    from dvc.repo import Repo

    repo = Repo(str(ws.root))
    name = repo.config["core"].get("remote")
    if not name:
        return {}
    settings = {k: str(v) for k, v in repo.config["remote"][name].items() if k in ("url", "endpointurl", "region")}
    if "://" not in settings["url"]:
        settings["url"] = str((ws.root / ".dvc" / settings["url"]).resolve())
    return settings


# --- is the remote usable? ------------------------------------------------------------------

# Keys of a DVC S3 remote that change where or as whom boto3 connects. Credentials appear here
# only when the user put them in .dvc/config.local (README): DVC would use them, so the check
# must too; they stay in memory and never enter a message.
_S3_KEYS = ("url", "endpointurl", "region", "profile", "access_key_id", "secret_access_key", "session_token")
_CHECK_TIMEOUT_S = 5


def _dvc_default_remote(ws: Workspace) -> tuple[str, dict[str, str]]:
    """(name, settings) of the workspace's DVC default remote, config.local included; ("", {})
    before `dvc init` (Repo() would otherwise climb to a parent directory's DVC repo)."""
    from dvc.repo import Repo

    if not (ws.root / ".dvc").is_dir():
        return "", {}
    config = Repo(str(ws.root)).config
    name = config["core"].get("remote") or ""
    if not name or name not in config["remote"]:
        return name, {}
    return name, {k: str(v) for k, v in config["remote"][name].items() if k in _S3_KEYS}


def _remote_to_check(ws: Workspace, remote: RemoteConfig | None = None) -> dict[str, str]:
    """The remote DVC will push to once `init_repo(ws, remote)` has run (the flows run it
    first), so a CLI check made before the flow sees the same remote as the push."""
    name, current = _dvc_default_remote(ws)
    if remote is not None and remote.url:
        wanted = {"url": remote.url, "endpointurl": remote.endpoint_url, "region": remote.region}
        extra = {k: v for k, v in current.items() if k not in wanted} if name == S3_REMOTE else {}
        return {**extra, **{k: v for k, v in wanted.items() if v}}
    if remote is not None and (not name or name == S3_REMOTE):
        return {"url": str(ws.dvc_remote)}
    if current and "://" not in current["url"]:
        current["url"] = str((ws.root / ".dvc" / current["url"]).resolve())
    return current or {"url": str(ws.dvc_remote)}


def check_remote(ws: Workspace, remote: RemoteConfig | None = None) -> None:
    """Refuse, in one line, a data remote DVC could not push to, before anything is written.

    `remote` is the config's `data.remote` (kaizen.yaml and --set may differ from .dvc/config
    until init_repo runs); None checks the DVC default remote as it stands. An S3 remote gets
    one authenticated HEAD of its bucket with short timeouts; a local one, a writability check.
    Nothing is remembered between calls: a bucket deleted a second ago must be reported, and
    a HEAD is cheap (`kaizen ingest` makes two: the CLI's check and the flow's own).
    """
    settings = _remote_to_check(ws, remote)
    url = settings.get("url", "")
    if url.startswith("s3://"):
        _check_s3(settings)
    elif "://" not in url:
        _check_local(Path(url))
    # Other schemes (gs://, azure://, ssh://) are configured by hand in .dvc/config; DVC reports them.


def _check_local(path: Path) -> None:
    """A local remote must be a directory we can write, or creatable under one."""
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        cause = "is not a directory" if probe == path else f"cannot be created: {probe} is not a directory"
        raise VersioningError(f"data remote {path}: {cause}")
    if not os.access(probe, os.W_OK | os.X_OK):
        cause = "is not writable" if probe == path else f"cannot be created: {probe} is not writable"
        raise VersioningError(f"data remote {path}: {cause}")


def _check_s3(settings: dict[str, str]) -> None:
    """One HEAD of the bucket with the endpoint, region and credentials DVC's S3 client uses."""
    import boto3
    from botocore import exceptions as bx
    from botocore.config import Config

    url = settings["url"]
    bucket = urlparse(url).netloc
    endpoint = settings.get("endpointurl") or None
    try:
        session = boto3.session.Session(
            aws_access_key_id=settings.get("access_key_id"),
            aws_secret_access_key=settings.get("secret_access_key"),
            aws_session_token=settings.get("session_token"),
            profile_name=settings.get("profile"),
        )
        client = session.client(
            "s3",
            endpoint_url=endpoint,
            region_name=settings.get("region") or None,
            config=Config(
                connect_timeout=_CHECK_TIMEOUT_S,
                read_timeout=_CHECK_TIMEOUT_S,
                retries={"max_attempts": 2, "mode": "standard"},
            ),
        )
        client.head_bucket(Bucket=bucket)
    except (bx.BotoCoreError, bx.ClientError, ValueError) as exc:
        shown = _without_userinfo(endpoint) if endpoint else "the AWS S3 endpoint"
        cause = _s3_cause(exc, bucket, shown)
        # botocore's own text repeats the endpoint as written, userinfo and all; `from None`
        # because Prefect logs a failed task's traceback with its chain.
        cause = cause.replace(endpoint, shown) if endpoint else cause
        raise VersioningError(f"data remote {url}: {cause}") from None


def _s3_cause(exc: Exception, bucket: str, endpoint: str) -> str:
    """One line a user acts on, for what a HEAD of the bucket raised."""
    from botocore import exceptions as bx

    if isinstance(exc, bx.NoCredentialsError):
        return "no AWS credentials found (boto3 credential chain: environment, ~/.aws, instance role)"
    if isinstance(exc, bx.PartialCredentialsError | bx.ProfileNotFound | bx.CredentialRetrievalError):
        return f"AWS credentials cannot be loaded ({_one_line(exc)})"
    if isinstance(exc, bx.ConnectTimeoutError | bx.ReadTimeoutError):
        return f"endpoint {endpoint} is unreachable (no answer within {_CHECK_TIMEOUT_S} s)"
    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectionError | bx.HTTPClientError):
        return f"endpoint {endpoint} is unreachable ({_connection_cause(exc)})"
    if isinstance(exc, bx.ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket"):
            return f"bucket '{bucket}' does not exist"
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return "access denied (the credentials are not valid there or may not list the bucket)"
        if code in ("301", "PermanentRedirect"):
            return f"bucket '{bucket}' is in another region than the one configured (set data.remote.region)"
        return f"the S3 endpoint {endpoint} answered {_one_line(exc)}"
    if isinstance(exc, ValueError):
        return f"endpoint {endpoint} is not a usable URL ({_one_line(exc)})"
    return _one_line(exc)


def _connection_cause(exc: Exception) -> str:
    # botocore wraps urllib3's error; "[Errno 111] Connection refused" is what a user recognises.
    inner = str(getattr(exc, "kwargs", {}).get("error") or exc)
    if "] " in inner and "[Errno" in inner:
        return inner.split("] ", 1)[1].strip().rstrip(")'\"")
    return _one_line(exc)


def _without_userinfo(url: str) -> str:
    # An endpoint written as http://user:password@host must not carry the password into a message.
    parts = urlparse(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl() if "@" in parts.netloc else url


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def checkout_version(md5: str, remote: dict[str, str], target: Path) -> Path:
    """Restore the exact `data/` of data version `md5` from `remote` into `target/data`.

    A throwaway DVC repo in `target` points at the same remote and a data.dvc naming that
    md5; `dvc fetch` downloads into its cache, every object is checked against its md5
    (`_fetch_verified`), and only then does `dvc checkout` create `target/data`.
    """
    from dvc.repo import Repo

    if not md5 or not remote.get("url"):
        raise VersioningError("this version records no data version or DVC remote")
    target.mkdir(parents=True, exist_ok=True)
    if (target / "data").exists() and any((target / "data").iterdir()):
        raise VersioningError(f"{target / 'data'} already exists and is not empty")
    with _quiet_dvc():
        if not (target / ".dvc").exists():
            Repo.init(str(target), no_scm=True)
        repo = Repo(str(target))
        with repo.config.edit() as conf:
            conf["core"]["analytics"] = False
            conf["remote"]["origin"] = {k: v for k, v in remote.items()}
            conf["core"]["remote"] = "origin"
        (target / "data.dvc").write_text(yaml.safe_dump({"outs": [{"md5": md5, "hash": "md5", "path": "data"}]}))
        repo = Repo(str(target))
        try:
            _fetch_verified(repo, md5, remote["url"])
            repo.checkout(force=True)
        except VersioningError:
            raise
        except Exception as exc:
            raise VersioningError(f"cannot restore data version {md5} from {remote['url']}: {exc}") from exc
    return target / "data"


def _push_marker(ws: Workspace) -> Path:
    return ws.state / "push-pending"


def commit_data(ws: Workspace) -> str:
    """`dvc add data` + `dvc push`; returns the new data version.

    `dvc add` rewrites data.dvc before `dvc push` uploads, so a process killed in between
    would leave a data version the remote lacks. A marker written before and removed after
    the push lets the next command finish the push first (`finish_interrupted_push`).
    """
    from dvc.repo import Repo

    marker = _push_marker(ws)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("dvc push not confirmed\n")
    try:
        with _quiet_dvc():
            repo = Repo(str(ws.root))
            repo.add(str(ws.data))
            repo.push()
    except Exception as exc:  # DVC raises many types; the caller rolls the batch back
        raise VersioningError(f"dvc add/push of {ws.data} failed: {exc}") from exc
    marker.unlink(missing_ok=True)
    version = data_version(ws)
    if version is None:
        raise VersioningError(f"{ws.dvc_file} has no md5 after dvc add")
    return version


def finish_interrupted_push(ws: Workspace) -> bool:
    """If an earlier push never confirmed, push the current data version now.

    Returns True when it had to; raises VersioningError (naming the cause) if it still cannot,
    so no cycle starts on a data version the remote does not hold.
    """
    from dvc.repo import Repo

    marker = _push_marker(ws)
    if not marker.exists():
        return False
    try:
        with _quiet_dvc():
            repo = Repo(str(ws.root))
            if ws.data.exists():
                repo.add(str(ws.data))
            repo.push()
    except Exception as exc:
        raise VersioningError(f"an earlier dvc push was interrupted and still fails: {exc}") from exc
    marker.unlink(missing_ok=True)
    return True


# --- finishing or undoing what a killed command left half done -------------------------------


def _change_marker(ws: Workspace) -> Path:
    return ws.state / "data-changing"


@contextlib.contextmanager
def changing_data(ws: Workspace):
    """Mark `data/` as changing until the change is committed (`commit_data` inside the block).

    A command killed inside the block leaves the marker; the next command then undoes the
    change (`recover_data`), unless the kill came after `dvc add` began (the push marker), when
    it finishes the change instead. Checking a marker costs nothing; hashing data/ to find an
    uncommitted change would cost in proportion to the whole history.
    """
    marker = _change_marker(ws)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("data/ is being changed; not committed yet\n")
    yield
    marker.unlink(missing_ok=True)


def recover_data(ws: Workspace) -> str | None:
    """Bring data/ back to a committed state after a killed command; say what was done.

    Past `dvc add` (the push marker) the change was validated and recorded, so it is finished
    (pushed). Before it, data/ is rolled back to the data version in data.dvc; any file the
    rollback would remove or overwrite is first moved to `.kaizen/recovered/<time>/`.
    """
    if finish_interrupted_push(ws):
        _change_marker(ws).unlink(missing_ok=True)
        return f"finished an interrupted dvc push of data version {data_version(ws)}"
    if not _change_marker(ws).exists():
        return None
    kept = roll_back_data(ws)
    _change_marker(ws).unlink(missing_ok=True)
    where = f"; uncommitted files kept in {kept}" if kept else ""
    return f"rolled data/ back to data version {data_version(ws) or '(none)'} after an interrupted change{where}"


def committed_files(ws: Workspace) -> dict[str, str]:
    """relpath -> md5 of every file of the committed data version, from the local DVC cache."""
    from dvc.repo import Repo

    md5 = data_version(ws)
    if md5 is None:
        return {}
    with _quiet_dvc():
        listing = Path(Repo(str(ws.root)).cache.local.oid_to_path(md5))
    if not listing.is_file():
        raise VersioningError(f"data version {md5} is not in the local DVC cache; run `dvc pull` in {ws.root}")
    return {entry["relpath"]: entry["md5"] for entry in json.loads(listing.read_text())}


def roll_back_data(ws: Workspace) -> Path | None:
    """Make data/ equal the committed data version; returns where displaced files were kept."""
    from dvc.repo import Repo

    committed = committed_files(ws)
    present = [p for p in ws.data.rglob("*") if p.is_file()] if ws.data.exists() else []
    # Batches are immutable, so only extra files and a rewritten manifest or pool can differ.
    rewritable = {ws.manifest, ws.data / "pool.parquet", ws.data / "pool.json"}
    displaced = [
        p
        for p in present
        if (rel := p.relative_to(ws.data).as_posix()) not in committed
        or (p in rewritable and _md5_of(p) != committed[rel])
    ]
    kept = None
    if displaced:
        from datetime import UTC, datetime

        kept = ws.state / "recovered" / datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        for path in displaced:
            target = kept / path.relative_to(ws.data)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    if committed:
        with _quiet_dvc():
            Repo(str(ws.root)).checkout(force=True)
    return kept


def pull_data(ws: Workspace) -> None:
    """`dvc pull` of the current data version, refusing (before data/ is touched) any object
    whose bytes do not match its md5: `dvc fetch`, verify the cache, then `dvc checkout`."""
    from dvc.repo import Repo

    md5 = data_version(ws)
    with _quiet_dvc():
        repo = Repo(str(ws.root))
        if md5 is not None:
            _fetch_verified(repo, md5, remote_settings(ws).get("url", "?"))
        repo.checkout(force=True)


# --- restoring only what matches its hash ---------------------------------------------------


def _md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _object_name(md5: str) -> str:
    # How the object is named in a DVC 3 remote (and cache): files/md5/ab/cdef...
    return f"files/md5/{md5[:2]}/{md5[2:]}"


def _fetch_verified(repo: Repo, md5: str, url: str) -> None:
    """`dvc fetch` data version `md5`, then recompute the md5 of its .dir manifest and of every
    file it lists in the local cache.

    DVC 3 does not re-hash what it downloads (a remote's `verify` defaults to false), so an
    object changed in place in the remote would be checked out silently. A mismatching object
    is deleted from the cache (a later fetch, once the remote is repaired, downloads it again)
    and the restore refused before anything under data/ is written.
    """
    repo.fetch()
    odb = repo.cache.local
    manifest = Path(odb.oid_to_path(md5))
    if not manifest.is_file():
        raise VersioningError(f"data remote {url}: object {_object_name(md5)} (data version) is missing")
    if _md5_of(manifest) != md5.removesuffix(".dir"):
        _refuse(manifest, url, md5, "the .dir manifest of the data version")
    for entry in json.loads(manifest.read_text()):
        path = Path(odb.oid_to_path(entry["md5"]))
        if not path.is_file():
            raise VersioningError(f"data remote {url}: object {_object_name(entry['md5'])} is missing")
        if _md5_of(path) != entry["md5"]:
            _refuse(path, url, entry["md5"], f"batch data/{entry['relpath']}")


def _refuse(path: Path, url: str, md5: str, what: str) -> NoReturn:
    # The bad copy must not stay in the cache, or every later restore would reuse it.
    path.unlink(missing_ok=True)
    raise VersioningError(
        f"data remote {url}: object {_object_name(md5)} ({what}) does not match its md5 {md5}; refusing to restore"
    )
