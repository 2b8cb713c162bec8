"""One end-to-end story of the continual cycle, run once per session (the `e2e_cycle` fixture).

Real Prefect (test harness), MLflow on SQLite, DVC with a local remote, GX validation and a tiny
random 2-layer encoder: bootstrap, promotion, quarantine, gate rejection, rollback, then the CLI's
views and the quarantine round trip. It takes minutes, so it runs once and the tests in
tests/flows/test_continual_cycle.py and tests/model/test_behaviour.py read what it recorded.

Every value is captured at the moment the story reaches it, because later steps move the aliases,
the data and the quarantine. Steps do not assert: a CLI step that breaks is recorded (exit status,
output, traceback) so only the test about it fails; only a step the rest depends on (a cycle, a
registry read) stops the story, with a StepError naming it."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import tree_snapshot

BOOTSTRAP, SHIFTED, CORRUPT, NOISED = "demo-1-restaurants", "demo-2-gadgets", "demo-3-corrupt", "demo-4-noised"
ROLLBACK_REASON = "test rollback"


class StepError(RuntimeError):
    """A step the rest of the story depends on could not run."""


@contextlib.contextmanager
def step(name: str):
    # Turn an escaped exception into one that says which step of the story broke.
    try:
        yield
    except Exception as exc:
        raise StepError(f"end-to-end cycle: step '{name}' could not run: {exc!r}") from exc


@dataclass(frozen=True)
class CliRun:
    """One `kaizen ...` call through flows.cli.main: exit status and what it printed."""

    argv: list[str]
    code: int | None  # None when an exception escaped main (or the step's preparation)
    out: str
    err: str
    error: str | None = None  # that exception's traceback

    def why(self) -> str:
        """Assertion message: the command and whatever explains its failure."""
        return f"kaizen {' '.join(self.argv)} -> {self.code}\n{self.error or self.err or self.out}"


def cli(argv: list[str], prepare: Callable[[], None] | None = None) -> CliRun:
    """Run the CLI with stdout/stderr captured (typer.echo writes to sys.stdout as it is at call
    time, so redirect_stdout sees it; capsys cannot serve a session fixture)."""
    from flows.cli import main

    out, err = io.StringIO(), io.StringIO()
    code, error = None, None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            if prepare is not None:
                prepare()
            code = main(argv)
    except Exception:  # recorded, so the rest of the story (and its tests) still runs
        error = traceback.format_exc()
    return CliRun(argv, code, out.getvalue(), err.getvalue(), error)


@dataclass(frozen=True)
class Snapshot:
    """What a quarantined batch must leave untouched."""

    data_version: str | None
    data_tree: dict[str, int]
    remote_tree: dict[str, int]
    versions: int


@dataclass(frozen=True)
class Bootstrap:
    """Cycle 1: the first batch, right after its cycle."""

    summary: dict
    champion: Any  # tasks.registry.ModelRef | None
    data_version: str | None
    remote_has_md5: bool  # whether dvc push filled the remote's files/md5


@dataclass(frozen=True)
class Promotion:
    """Cycle 2: the shifted batch, right after its cycle."""

    summary: dict
    champion: Any  # tasks.registry.ModelRef | None
    model_dir: Path  # v2's classifier directory, downloaded before the rollback


@dataclass(frozen=True)
class Quarantine:
    """Cycle 3: the corrupt batch."""

    rejection: str | None  # BatchRejected's message; None when the cycle was not rejected
    summary: dict | None  # what the cycle returned when it was not rejected
    quarantined: dict[str, int]  # files under quarantine/demo-3-corrupt right after the cycle
    before: Snapshot
    after: Snapshot
    champion_version: str | None


@dataclass(frozen=True)
class Rejection:
    """Cycle 4: the label-noised batch, right after its cycle."""

    summary: dict
    champion_version: str | None
    challenger_version: str | None
    quarantined: dict[str, int]  # files under quarantine/demo-4-noised
    data_version: str | None


@dataclass(frozen=True)
class Rollback:
    cli: CliRun
    champion_version: str | None
    ledger: list  # tasks.registry.LedgerEntry, read right after the rollback


@dataclass(frozen=True)
class Views:
    """The read-only commands after the rollback: status, history, report, lineage."""

    status: CliRun
    data_version: str | None  # the workspace's, when status ran
    history: CliRun
    report: CliRun
    report_dir: Path
    lineage: CliRun
    restored: Path
    original_sha256: str | None  # of the workspace's bootstrap batch file when lineage ran (None: missing)


@dataclass(frozen=True)
class Resubmission:
    listed: CliRun
    resubmit: CliRun
    manifest_ids: list[str]  # batch ids in the manifest right after the resubmission
    listed_after: CliRun


@dataclass(frozen=True)
class E2ECycle:
    """Everything the end-to-end tests check, in story order."""

    root: Path
    ws: Any  # tasks.workspace.Workspace
    config: Any  # tasks.config.KaizenConfig (with the golden set)
    bootstrap: Bootstrap
    promotion: Promotion
    quarantine: Quarantine
    rejection: Rejection
    rollback: Rollback
    views: Views
    resubmission: Resubmission


def registry(root: Path):
    """(workspace, config, MLflow client, registered model name) of a workspace directory."""
    from tasks.config import load_config
    from tasks.registry import connect
    from tasks.workspace import Workspace

    ws = Workspace.at(root)
    config = load_config(ws.root)
    return ws, config, connect(ws, config), config.registry.model_name


def add_golden_set(root: Path) -> None:
    """A hand-curated golden set from config is evaluated every cycle beside new/regression."""
    import pandas as pd
    import yaml

    from tasks.demo_data import GADGET, RESTAURANT, make_domain_batch

    golden = pd.concat(
        [make_domain_batch(RESTAURANT, "restaurants", 40, 77), make_domain_batch(GADGET, "gadgets", 40, 78)]
    )
    golden.to_csv(root / "golden.csv", index=False)
    settings = yaml.safe_load((root / "kaizen.yaml").read_text())
    settings["evaluate"]["golden_file"] = "golden.csv"
    (root / "kaizen.yaml").write_text(yaml.safe_dump(settings))


class Story:
    """The workspace under test and the handles every step needs."""

    def __init__(self, root: Path, files: dict[str, Path]):
        with step("golden set in config"):
            add_golden_set(root)
            self.ws, self.config, self.client, self.name = registry(root)
        self.root, self.files = root, files

    def cycle(self, batch_id: str) -> dict:
        from flows.pipeline import continual_training

        return continual_training(files=[str(self.files[batch_id])], batch_ids=[batch_id], workspace=str(self.root))

    def alias(self, alias: str):
        from tasks.registry import get_alias

        return get_alias(self.client, self.name, alias)

    def alias_version(self, alias: str) -> str | None:
        ref = self.alias(alias)
        return None if ref is None else ref.version

    def data_version(self) -> str | None:
        from tasks.versioning import data_version

        return data_version(self.ws)

    def snapshot(self) -> Snapshot:
        from tasks.registry import list_versions

        return Snapshot(
            self.data_version(),
            tree_snapshot(self.ws.data),
            tree_snapshot(self.ws.dvc_remote),
            len(list_versions(self.client, self.name)),
        )

    def kaizen(self, *args: str, prepare: Callable[[], None] | None = None) -> CliRun:
        return cli([*args, "--workspace", str(self.root)], prepare)


def run_bootstrap(s: Story) -> Bootstrap:
    from tasks.registry import CHAMPION

    with step(f"cycle 1 ({BOOTSTRAP})"):
        summary = s.cycle(BOOTSTRAP)
        return Bootstrap(summary, s.alias(CHAMPION), s.data_version(), (s.ws.dvc_remote / "files" / "md5").exists())


def run_promotion(s: Story) -> Promotion:
    from tasks.registry import CHAMPION, download_model, get_version

    with step(f"cycle 2 ({SHIFTED})"):
        summary = s.cycle(SHIFTED)
        champion = s.alias(CHAMPION)
    # The behaviour tests probe this model; fetched now, while v2 is the champion.
    with step("download champion v2"):
        model_dir = download_model(s.client, get_version(s.client, s.name, "2"), s.root.parent / "champion-v2")
    return Promotion(summary, champion, model_dir)


def run_quarantine(s: Story) -> Quarantine:
    from flows.pipeline import BatchRejected
    from tasks.registry import CHAMPION

    with step(f"cycle 3 ({CORRUPT})"):
        before = s.snapshot()
        rejection, summary = None, None
        try:
            summary = s.cycle(CORRUPT)
        except BatchRejected as rejected:  # the expected outcome; any other exception stops the story
            rejection = str(rejected)
        quarantined = tree_snapshot(s.ws.quarantine / CORRUPT)
        return Quarantine(rejection, summary, quarantined, before, s.snapshot(), s.alias_version(CHAMPION))


def run_rejection(s: Story) -> Rejection:
    from tasks.registry import CHALLENGER, CHAMPION

    with step(f"cycle 4 ({NOISED})"):
        summary = s.cycle(NOISED)
        return Rejection(
            summary,
            s.alias_version(CHAMPION),
            s.alias_version(CHALLENGER),
            tree_snapshot(s.ws.quarantine / NOISED),
            s.data_version(),
        )


def run_rollback(s: Story) -> Rollback:
    from tasks.registry import CHAMPION, read_ledger

    run = s.kaizen("rollback", "--reason", ROLLBACK_REASON)
    with step("read the ledger after the rollback"):
        return Rollback(run, s.alias_version(CHAMPION), read_ledger(s.client, s.name))


def run_views(s: Story) -> Views:
    status = s.kaizen("status", "--json")
    with step("data version after status"):
        data_version = s.data_version()
    history = s.kaizen("history")
    report_dir = s.root.parent / "report"
    report = s.kaizen("report", "--out", str(report_dir))
    restored = s.root.parent / "restored"
    lineage = s.kaizen("lineage", "1", "--checkout", str(restored), "--json")
    batch = s.ws.batch_path(BOOTSTRAP)  # a missing file fails only the lineage test
    original = hashlib.sha256(batch.read_bytes()).hexdigest() if batch.exists() else None
    return Views(status, data_version, history, report, report_dir, lineage, restored, original)


def run_resubmission(s: Story) -> Resubmission:
    import pandas as pd

    listed = s.kaizen("quarantine", "list", "--json")
    fixed_path = s.root.parent / "fixed.csv"

    def fix_corrupt_batch() -> None:
        # Drop what validation complained about (blank texts, undeclared labels).
        fixed = pd.read_parquet(s.ws.quarantine / CORRUPT / "batch.parquet")
        fixed = fixed[(fixed["text"].str.strip() != "") & fixed["label"].isin(s.config.labels)].drop(columns=["split"])
        fixed.to_csv(fixed_path, index=False)

    resubmit = s.kaizen("quarantine", "resubmit", CORRUPT, "--file", str(fixed_path), prepare=fix_corrupt_batch)
    with step("read the manifest after the resubmission"):
        manifest_ids = [e["batch_id"] for e in json.loads(s.ws.manifest.read_text())] if s.ws.manifest.exists() else []
    return Resubmission(listed, resubmit, manifest_ids, s.kaizen("quarantine", "list", "--json"))


def run_story(root: Path, files: dict[str, Path]) -> E2ECycle:
    """Every step of the story, in order, on a fresh workspace at `root`."""
    s = Story(root, files)
    bootstrap = run_bootstrap(s)
    promotion = run_promotion(s)
    quarantine = run_quarantine(s)
    rejection = run_rejection(s)
    rollback = run_rollback(s)
    views = run_views(s)
    return E2ECycle(
        root, s.ws, s.config, bootstrap, promotion, quarantine, rejection, rollback, views, run_resubmission(s)
    )
