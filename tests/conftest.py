"""Shared fixtures: offline environment, Prefect's test harness, tiny-model workspaces."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml

from tasks.runtime import OFFLINE_AND_QUIET

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"

# Before anything imports transformers, prefect or GX: the same offline, quiet defaults as
# every entry point (tasks/runtime.py), forced here so a developer's shell cannot turn a test
# into a hub download.
os.environ.update({**OFFLINE_AND_QUIET, "KAIZEN_USER": "pytest"})
# One OpenMP thread per process, inherited by every command the tests start. Tiny models gain
# nothing from more, and the suite runs several torch processes at once (a served cycle beside
# the test that polls it, two pytest workers): with torch's default of one spinning thread per
# core each, two tiny cycles side by side trained at 32 samples/s instead of 600 (115 s against
# 37 s for both, measured on 2 cores).
os.environ["OMP_NUM_THREADS"] = "1"

# A tiny 2-layer random encoder learns the template corpus in seconds at a high rate.
TINY_CONFIG = {
    "project": "kaizen-test",
    "labels": ["negative", "positive"],
    "data": {"slice_columns": ["domain"]},
    "validation": {"min_rows": 20},
    "model": {"base": "tiny", "max_length": 64},
    "train": {"epochs": 8, "batch_size": 16, "lr": 3.0e-3, "warmup_ratio": 0.05, "patience": 3, "seed": 3},
    "evaluate": {"bootstrap_resamples": 200},
    "gate": {
        "min_accuracy_new": 0.75,
        "min_macro_f1_new": 0.7,
        "min_improvement_new": 0.0,
        # ~40-row test splits: a 2-point margin could never be shown non-inferior.
        "noninferiority_margin": 0.15,
        "min_slice_rows": 30,
        "min_eval_rows": 10,
        "max_ece": 0.35,
        # Sub-millisecond forward passes of the tiny encoder are mostly timer noise.
        "max_latency_ratio": 5.0,
        "bootstrap": {"min_accuracy_new": 0.75, "max_ece": 0.35},
    },
}


# For tests about something else (serving, the stack, running unattended, approval): the tiny
# encoder's sub-millisecond timings on a loaded machine are noise, and once failed the p95 ratio.
LATENCY_RULE_OFF = {"max_latency_ratio": 1000}


def tiny_config(**gate) -> dict:
    """A copy of TINY_CONFIG with these gate settings."""
    config = copy.deepcopy(TINY_CONFIG)
    config["gate"].update(gate)
    return config


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def make_workspace(root: Path, config: dict | None = None) -> Path:
    from tasks.config import load_config
    from tasks.versioning import init_repo
    from tasks.workspace import Workspace

    root.mkdir(parents=True, exist_ok=True)
    (root / "kaizen.yaml").write_text(yaml.safe_dump(config or TINY_CONFIG))
    init_repo(Workspace.at(root), load_config(root).data.remote)
    return root


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return make_workspace(tmp_path / "ws")


@pytest.fixture(scope="session")
def demo_files(tmp_path_factory) -> dict[str, Path]:
    from tasks.demo_data import write_demo_batches

    target = tmp_path_factory.mktemp("demo-input")
    return {batch_id: path for batch_id, path, _ in write_demo_batches(target, rows=400)}


@pytest.fixture(scope="session")
def e2e_cycle(prefect_harness, demo_files, tmp_path_factory):
    """The continual cycle end to end, once per session: bootstrap, promotion, quarantine, gate
    rejection, rollback and the CLI views (see tests/flows/e2e.py); what each step left behind,
    recorded at that moment, for the tests in tests/flows and tests/model."""
    from tests.flows.e2e import run_story

    return run_story(make_workspace(tmp_path_factory.mktemp("e2e") / "ws"), demo_files)


def tree_snapshot(path: Path) -> dict[str, int]:
    """Relative path -> size of every file below `path` (empty when it does not exist)."""
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file()}


# Under pytest-xdist (`make test` runs three workers) a file is the unit of work (see
# pytest_xdist_make_scheduler), so a file's module fixtures (the stack, a family's story, the
# serve-model service) are built once. The files that take minutes go first, so the workers do
# not each end on one long file (docs/design-notes.md, "The suite's time").
LONG_FIRST = (
    "tests/stack/",
    "tests/flows/test_unattended.py",
    "tests/flows/test_approval.py",
    "tests/reliability/test_concurrent_commands.py",
    "tests/flows/test_families.py",
    "tests/reliability/test_kill_at_every_step.py",
    "tests/reliability/test_flaky_s3.py",
    "tests/flows/test_prefect_yaml.py",
)
# Files that read one session fixture's story share a unit of work, so it is told once.
SAME_UNIT = {"tests/model/test_behaviour.py": "tests/flows/test_continual_cycle.py"}


def pytest_collection_modifyitems(config, items):
    """`exhaustive` tests (the full kill harness) run only when a marker expression is given
    (`pytest -m slow`); a plain `pytest`, which CI runs, takes their bounded subset. Under xdist
    the long files are moved to the front (LONG_FIRST), a file sharing a unit with another next
    to it."""
    if not config.option.markexpr:
        chosen = [item for item in items if item.get_closest_marker("exhaustive") is None]
        if len(chosen) != len(items):
            config.hook.pytest_deselected(items=[i for i in items if i not in chosen])
            items[:] = chosen
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return  # one process: the order that has always run
    rank = {p: i for i, p in enumerate(LONG_FIRST)}
    files = [unit_of(item.nodeid) for item in items]
    first_seen = {f: i for i, f in reversed(list(enumerate(files)))}

    def order(pair):
        item, unit = pair
        long = next((i for p, i in rank.items() if unit.startswith(p)), len(rank))
        return long, first_seen[unit]

    items[:] = [item for item, _ in sorted(zip(items, files, strict=True), key=order)]


def unit_of(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    return SAME_UNIT.get(path, path)


def pytest_xdist_make_scheduler(config, log):
    """xdist's `loadfile`, with SAME_UNIT's files joined to their partner. Its `loadgroup` would
    do this by marker, but under pytest 9.2 with xdist 3.8 it grouped nothing (checked on a
    two-file toy suite)."""
    from xdist.scheduler import LoadScopeScheduling

    class ByFile(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return unit_of(nodeid)

    return ByFile(config, log)
