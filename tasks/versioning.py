"""Version `data/` with DVC: the md5 recorded in `data.dvc` is the data version."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from pathlib import Path

import yaml

from tasks.workspace import Workspace
from tasks.errors import KaizenError

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
        top = _git_toplevel(ws.root)
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


def checkout_version(md5: str, remote: dict[str, str], target: Path) -> Path:
    """Restore the exact `data/` of data version `md5` from `remote` into `target/data`.

    A throwaway DVC repo in `target` points at the same remote and a data.dvc naming that
    md5; `dvc pull` fetches and verifies every file against its hash.
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
        try:
            Repo(str(target)).pull(force=True)
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


def pull_data(ws: Workspace) -> None:
    from dvc.repo import Repo

    with _quiet_dvc():
        Repo(str(ws.root)).pull(force=True)
