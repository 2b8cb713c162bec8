"""The non-training cost of one cycle against 10, 100 and 1000 batches of history, side by side.

  .venv/bin/python benchmarks/cycle_cost.py [--sizes 10,100,1000] [--rows 200] [--repeats 3]

For each history size N, a fresh workspace with the tiny test config (tests/conftest.py:
TINY_CONFIG, `model.base: tiny`, SQLite registry under the workspace) gets a history built
without training:
  data      N batches of `--rows` distinct synthetic reviews (tasks/demo_data.py generators, a
            seed per batch, the batch index appended to every text; restaurant and gadget
            domains alternating), prepared by tasks.ingest.prepare_batch, written with
            write_batch (the manifest grows) and pooled with tasks.pool.add_batch. No DVC
            commit and no history statistics: versioning is not what is timed.
  registry  one model version per batch (`--batches-per-version` k: one per k batches), each
            tagged with the lineage a real cycle writes (new batches, parent, every batch so
            far, gate verdict pass, cycle state done, weights sha256) and promoted in turn, so
            the champion alias walks along and the ledger holds one entry per version.
            Version 1 is a real register_challenger + move_champion of the fixed model; the
            versions after it are created cheaply with create_model_version against that one
            run and its model source (a real cycle has a run per version; no timed stage reads
            runs), and their promotions written as move_champion leaves them (ledger entry,
            promoted-at tag) without its lock and re-reads; the last one is a real
            move_champion again. `--real-moves` promotes every version with move_champion
            (the same end state, slower: each move re-reads the whole ledger).
            Versions and batches are then backdated as if one cycle ran every
            `--cycle-minutes` (default daily): the planner only reads versions registered
            since the oldest unlearned batch was ingested (less an hour's clock margin), so a
            registry created seconds ago would make it read every version, which no real
            history does (--cycle-minutes 0 measures that worst case).
Then one NEW batch is ingested the same way, and each stage is timed as flows/pipeline.py
run_cycle calls it, median of `--repeats`:
  plan        tasks.cycle.plan_cycle (checked: new batches = [the new batch], N seen)
  featurize   load the tokenizer, featurize_batch of the new batch and featurize_pool, with
              the feature cache emptied before each repetition: a real cycle always meets a
              new batch and a pool that changed when it was ingested, so both are tokenized
  replay draw tasks.dataset.training_sets with the config's replay settings
  regression  tasks.dataset.evaluation_sets (new test split + regression set from the pool);
              evaluate_challenger builds these sets again itself, so a cycle pays this once:
              "total" sums every stage, the row below it counts the regression build once
  evaluate    tasks.evaluate.evaluate_challenger, one fixed tiny model (models/classifier.py
              build_tiny, saved once) as both challenger and champion
  registry    the "register+promote" of a cycle: cycle.register_version (register_challenger:
              log the pyfunc, create the version, alias; description; end the run), then
              promotion.promote_after_gate (move_champion + ledger) and cycle.close_version.
              Its run is started and its lineage built untimed, as in the flow. Each
              repetition registers and promotes one more version.
Sizes take turns (round 1 of every size, then round 2, ...), so a noisy moment on a shared
machine does not land on one size; the MLflow client is connected before timing.

Printed: stage seconds per history size and the largest-vs-smallest ratio (goal: <= 1.2x),
also of the fastest repetitions (a busy machine only ever adds time), the registry stage by
call, the rows in the pool, the replay draw and the regression set, and how long building each
history took. Stages that read the pool also grow while the pool fills: it is capped per split
(data.pool: 4000 train, 1000 validation, 5000 test rows by default), and 200-row batches (about
20 test rows each) fill the test cap only after about 250 batches; `--sizes 300,1000` compares
two full pools, i.e. history alone. `--pool-rows` sets the caps.
"""

from __future__ import annotations

import argparse
import copy
import os
import shlex
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
# benchmarks/ lives in the repository root; a copy elsewhere is run from the root.
ROOT = HERE.parent if (HERE.parent / "tasks").is_dir() else Path.cwd()
sys.path.insert(0, str(ROOT))

from tasks.runtime import set_runtime_defaults  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
set_runtime_defaults()  # before anything imports transformers

from benchmarks.common import machine  # noqa: E402

STAGES = ("plan", "featurize", "replay draw", "regression build", "evaluate", "registry")
REGISTRY_PARTS = ("register_version", "promote (move_champion)", "close_version")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000", help="history sizes in batches, comma-separated")
    parser.add_argument("--rows", type=int, default=200, help="rows per batch")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions per stage (the median is shown)")
    parser.add_argument(
        "--batches-per-version", type=int, default=1, help="history batches consumed by each registered version"
    )
    parser.add_argument(
        "--cycle-minutes",
        type=float,
        default=24 * 60,
        help="simulated time between history cycles (backdates versions and batches; 0 = all just now)",
    )
    parser.add_argument(
        "--pool-rows", default="", help="override data.pool caps as TRAIN,VALIDATION,TEST rows (default: config's)"
    )
    parser.add_argument(
        "--real-moves",
        action="store_true",
        help="promote every history version with move_champion (slow: each move reads the whole ledger)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the workspaces and print where they are")
    return parser.parse_args()


def bench_config(args) -> dict:
    from tests.conftest import TINY_CONFIG

    config = copy.deepcopy(TINY_CONFIG)
    config["project"] = "cycle-cost"
    if args.pool_rows:
        train, validation, test = (int(v) for v in args.pool_rows.split(","))
        config["data"]["pool"] = {"train_rows": train, "validation_rows": validation, "test_rows": test}
        config.setdefault("evaluate", {})["regression_max_rows"] = test
    return config


def make_batch(index: int, rows: int, config):
    """A distinct synthetic batch: demo generator, own seed, batch index appended to each text."""
    from tasks.demo_data import GADGET, RESTAURANT, make_domain_batch
    from tasks.ingest import content_hash, prepare_batch

    domain, name = (RESTAURANT, "restaurants") if index % 2 == 0 else (GADGET, "gadgets")
    frame = make_domain_batch(domain, name, rows, seed=10_000 + index)
    frame["text"] = frame["text"] + f" (#{index})"
    batch = prepare_batch(frame, config, f"bench-{index}")
    return batch, content_hash(batch)


def ingest(ws, config, index: int, rows: int, now: datetime) -> str:
    from tasks import pool
    from tasks.ingest import make_batch_id, write_batch

    batch, sha = make_batch(index, rows, config)
    batch_id = make_batch_id(sha, now)
    write_batch(ws, batch_id, batch, sha, f"bench-{index}.csv")
    pool.add_batch(ws, batch_id, batch, config)
    return batch_id


def history_tags(batch_ids, new, parent, sha) -> dict[str, str]:
    from tasks.lineage import Lineage

    return Lineage(
        data_md5="0" * 32 + ".dir",
        batch_ids=list(batch_ids),
        new_batches=list(new),
        parent_version=parent,
        replayed_rows=160,
        dvc_remote="/srv/kaizen/dvc-remote",
        git_sha="f" * 40,
        config_hash="c" * 16,
        flow_run_id="00000000-0000-0000-0000-000000000000",
        gate_verdict="pass",
        weights_sha256=sha,
        cycle_state="done",
    ).to_tags()


def build_history(ctx, args, model_dir: Path, n: int) -> dict:
    """N batches ingested and pooled; one version per `--batches-per-version` batches, promoted
    in turn. Returns the batch ids, the seconds spent on data and registry, the version count."""
    from tasks.ingest import read_manifest
    from tasks.registry import (
        CHAMPION,
        PROMOTED_AT_TAG,
        LedgerEntry,
        current_user,
        file_sha256,
        move_champion,
        register_challenger,
        write_ledger_entry,
    )
    from tasks.tracking import start_cycle_run

    ws, config, client, name = ctx.ws, ctx.config, ctx.client, ctx.model_name
    step = timedelta(minutes=args.cycle_minutes)
    start = datetime.now(UTC) - n * step
    seconds = {"data": 0.0, "registry": 0.0}
    sha = file_sha256(model_dir / "model.safetensors")
    groups: list[list[str]] = []
    ingested_at: dict[str, datetime] = {}
    t = time.perf_counter()
    for i in range(n):
        when = start + i * step
        batch_id = ingest(ws, config, i, args.rows, when)
        ingested_at[batch_id] = when
        if not groups or len(groups[-1]) == args.batches_per_version:
            groups.append([])
        groups[-1].append(batch_id)
    seconds["data"] = time.perf_counter() - t

    t = time.perf_counter()
    learned: list[str] = []
    parent = source = model_id = run_id = None
    version_times: dict[str, datetime] = {}
    for k, new in enumerate(groups, start=1):
        learned += new
        when = ingested_at[new[-1]] + min(step / 2, timedelta(minutes=30))  # the cycle after its batch
        tags = history_tags(learned, new, parent, sha)
        real = k == 1 or k == len(groups) or args.real_moves
        if k == 1:  # a real registration: a model and a run for the others to point at
            run_id = start_cycle_run(ctx, new, "bench-history")
            version = register_challenger(client, config, run_id, model_dir, tags, ["example"]).version
            client.set_terminated(run_id)
            mv = client.get_model_version(name, version)
            source, model_id = mv.source, getattr(mv, "model_id", None)
        else:
            if not real:  # what move_champion would leave behind, written directly
                tags[PROMOTED_AT_TAG] = when.isoformat(timespec="seconds")
            mv = client.create_model_version(
                name, source, run_id=run_id, tags=tags, description="**Gate: pass** (challenge)", model_id=model_id
            )
            version = str(mv.version)
        if real:
            if k > 1 and not args.real_moves:
                client.set_registered_model_alias(name, CHAMPION, parent)  # the cheap moves' end state
            move_champion(client, ws, name, version, parent, "promote", "gate passed")
        else:
            entry = LedgerEntry(
                k, "promote", parent, version, current_user(), when.isoformat(timespec="seconds"), "gate passed"
            )
            write_ledger_entry(client, name, entry)
        version_times[version] = when
        parent = version
    seconds["registry"] = time.perf_counter() - t
    if args.cycle_minutes > 0:
        backdate(ws, name, version_times, ingested_at)
    return {"seconds": seconds, "versions": len(version_times), "manifest": len(read_manifest(ws))}


def backdate(ws, name: str, version_times: dict[str, datetime], ingested_at: dict[str, datetime]) -> None:
    """As if the history's cycles had run `--cycle-minutes` apart: version creation times in
    the SQLite registry and ingestion stamps in the manifest (the benchmark's own fixture)."""
    import json

    from tasks.ingest import read_manifest, write_atomic

    with sqlite3.connect(ws.mlflow_db) as db:
        db.executemany(
            "UPDATE model_versions SET creation_time = ?, last_updated_time = ? WHERE name = ? AND version = ?",
            [(int(t.timestamp() * 1000), int(t.timestamp() * 1000), name, int(v)) for v, t in version_times.items()],
        )
    manifest = read_manifest(ws)
    for entry in manifest:
        if entry["batch_id"] in ingested_at:
            entry["ingested_at"] = ingested_at[entry["batch_id"]].isoformat(timespec="seconds")
    write_atomic(ws.manifest, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=1)))


def timed(fn, *a, **kw):
    started = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - started


class Size:
    """One history size: its workspace, its new batch and what was measured on it."""

    def __init__(self, n: int, ctx, new_batch: str, model_dir: Path):
        self.n, self.ctx, self.new_batch, self.model_dir = n, ctx, new_batch, model_dir
        self.times: dict[str, list[float]] = {s: [] for s in STAGES + REGISTRY_PARTS}
        self.sets: dict[str, int] = {}
        self.evaluation = self.replayed = self.seen = None
        self.info: dict = {}

    def activate(self) -> None:
        """Point MLflow's global URIs at this workspace, as `connect` does for a cycle's process:
        register_challenger logs the model through them, and the sizes take turns here."""
        import mlflow

        from tasks.registry import tracking_uri

        uri = tracking_uri(self.ctx.ws, self.ctx.config)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)

    def median(self, stage: str) -> float:
        return statistics.median(self.times[stage])


def featurize_all(ws, config, plan, model_dir: Path) -> dict[str, str]:
    """flows/pipeline.py featurize_all without its Prefect task wrappers."""
    from models.base import load_tokenizer
    from tasks.dataset import POOL
    from tasks.featurize import featurize_batch, featurize_pool

    tokenizer = load_tokenizer(str(model_dir))
    max_length = config.model.max_length
    features = {b: featurize_batch(ws, b, tokenizer, max_length).path for b in plan.new_batches}
    if plan.seen_batches:
        features[POOL] = featurize_pool(ws, tokenizer, max_length).path
    return features


def data_round(size: Size) -> None:
    """plan, featurize (cache emptied first), replay draw, regression build, evaluate: once."""
    from tasks.cycle import plan_cycle
    from tasks.dataset import evaluation_sets, training_sets
    from tasks.evaluate import evaluate_challenger

    ctx, n = size.ctx, size.n
    ws, config = ctx.ws, ctx.config
    t, e = config.train, config.evaluate
    size.activate()
    plan, s = timed(plan_cycle, ctx)
    size.times["plan"].append(s)
    if plan.new_batches != [size.new_batch] or len(plan.seen_batches) != n:
        raise SystemExit(f"N={n}: the plan has new {plan.new_batches} and {len(plan.seen_batches)} seen batches")
    size.seen = plan.seen_batches
    shutil.rmtree(ws.features, ignore_errors=True)  # a new batch and a changed pool: tokenized
    features, s = timed(featurize_all, ws, config, plan, size.model_dir)
    size.times["featurize"].append(s)
    new, seen = plan.new_batches, plan.seen_batches
    args = (t.replay_fraction, t.replay_max_rows, t.seed)
    (train, validation, size.replayed), s = timed(training_sets, ws, config.labels, new, seen, features, *args)
    size.times["replay draw"].append(s)
    sets, s = timed(evaluation_sets, ws, config.labels, new, seen, features, e.regression_max_rows, e.seed)
    size.times["regression build"].append(s)
    model = str(size.model_dir)
    size.evaluation, s = timed(evaluate_challenger, ws, config, plan, features, model, model)
    size.times["evaluate"].append(s)
    size.sets = {
        "train": len(train),
        "replayed": size.replayed,
        "validation": len(validation),
        "new test": len(sets["new"]),
        "regression": len(sets["regression"]),
    }


def registry_round(size: Size) -> None:
    """The registry calls of a promoting cycle: register the challenger, promote it, close it.
    Its run and lineage are made untimed, as in run_cycle; each round adds one version."""
    from tasks import gate
    from tasks.cycle import CyclePlan, build_lineage, close_version, register_version
    from tasks.promotion import current_champion, promote_after_gate
    from tasks.tracking import start_cycle_run

    ctx = size.ctx
    size.activate()
    decision = gate.decide(size.evaluation, ctx.config.gate, True)
    decision = replace(decision, passed=True, held=False)
    champion = current_champion(ctx)
    plan = CyclePlan([size.new_batch], size.seen, champion)
    run_id = start_cycle_run(ctx, plan.new_batches, "bench")
    lineage = build_lineage(ctx, plan, size.replayed, decision, "bench", None)
    ref, a = timed(register_version, ctx, plan, run_id, str(size.model_dir), lineage, decision)
    _, b = timed(promote_after_gate, ctx, ref.version, champion)
    _, c = timed(close_version, ctx, ref.version)
    for part, s in zip(REGISTRY_PARTS, (a, b, c), strict=True):
        size.times[part].append(s)
    size.times["registry"].append(a + b + c)


def build_model(root: Path, labels: list[str]) -> Path:
    from models.base import save_model
    from models.classifier import build_tiny

    model, tokenizer = build_tiny(labels, seed=0)
    return save_model(model, tokenizer, root / "fixed-tiny")


def prepare_size(tmp: Path, args, config_dict: dict, model_dir: Path, n: int) -> Size:
    import pandas as pd

    from tasks.context import Context
    from tasks.pool import pool_path
    from tests.conftest import make_workspace

    started = time.perf_counter()
    ctx = Context.open(make_workspace(tmp / f"ws-{n}", config_dict))
    ctx.client  # noqa: B018  connected (and MLflow's tables created) before anything is timed
    history = build_history(ctx, args, model_dir, n)
    new_batch = ingest(ctx.ws, ctx.config, n, args.rows, datetime.now(UTC))
    size = Size(n, ctx, new_batch, model_dir)
    size.info = {
        "setup": time.perf_counter() - started,
        **history,
        "pool rows": len(pd.read_parquet(pool_path(ctx.ws))),
    }
    return size


def fmt_ratio(a: float, b: float) -> str:
    return f"{b / a:.2f}x" if a > 0 else "-"


def print_tables(sizes: list[Size]) -> None:
    lo, hi = sizes[0], sizes[-1]
    # The ratio of the fastest repetitions too: on a shared machine a busy moment lands on a median.
    head = (
        "| stage (median s) | "
        + " | ".join(f"{s.n} batches" for s in sizes)
        + f" | {hi.n} vs {lo.n} | {hi.n} vs {lo.n}, fastest runs |"
    )
    rule = "|---|" + "---:|" * (len(sizes) + 2)

    def row(label: str, stages: tuple[str, ...]) -> str:
        med = [sum(s.median(stage) for stage in stages) for s in sizes]
        low = [sum(min(s.times[stage]) for stage in stages) for s in sizes]
        ratios = f"{fmt_ratio(med[0], med[-1])} | {fmt_ratio(low[0], low[-1])}"
        return f"| {label} | " + " | ".join(f"{v:.3f}" for v in med) + f" | {ratios} |"

    print("\n" + head + "\n" + rule)
    for stage in STAGES:
        print(row(stage, (stage,)))
    print(row("**total**", STAGES))
    # evaluate_challenger builds the regression set itself: a cycle pays for it once.
    print(row("total, regression build counted once", tuple(s for s in STAGES if s != "regression build")))
    print("\nregistry stage, by call:\n\n" + head + "\n" + rule)
    for part in REGISTRY_PARTS:
        print(row(part, (part,)))
    print("\n| history | " + " | ".join(f"{s.n} batches" for s in sizes) + " |\n|---|" + "---:|" * len(sizes))
    lines = {
        "registered versions before the timed ones": [str(s.info["versions"]) for s in sizes],
        "rows in data/pool.parquet (history + new batch)": [str(s.info["pool rows"]) for s in sizes],
        "train rows (replayed)": [f"{s.sets['train']} ({s.sets['replayed']})" for s in sizes],
        "validation rows": [str(s.sets["validation"]) for s in sizes],
        "new test / regression rows": [f"{s.sets['new test']} / {s.sets['regression']}" for s in sizes],
        "setup s (data / registry)": [
            f"{s.info['setup']:.1f} ({s.info['seconds']['data']:.1f} / {s.info['seconds']['registry']:.1f})"
            for s in sizes
        ],
    }
    for label, values in lines.items():
        print(f"| {label} | " + " | ".join(values) + " |")


def main() -> None:
    args = parse_args()
    ns = [int(s) for s in args.sizes.split(",")]
    began = time.perf_counter()
    import logging

    import mlflow  # noqa: F401  its import configures its logger; quieten it afterwards

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    from tasks.config import KaizenConfig

    print(f"command: {shlex.join(sys.orig_argv)}")
    print(f"machine: {machine()}")
    config_dict = bench_config(args)
    pool = KaizenConfig.model_validate(config_dict).data.pool
    print(
        f"history: {args.rows} rows/batch, {args.batches_per_version} batch(es) per version, cycles "
        f"{args.cycle_minutes:g} min apart; pool caps train {pool.train_rows}, validation "
        f"{pool.validation_rows}, test {pool.test_rows}; median of {args.repeats}, sizes interleaved",
        flush=True,
    )
    tmp = Path(tempfile.mkdtemp(prefix="kaizen-cycle-cost-"))
    try:
        model_dir = build_model(tmp, config_dict["labels"])
        sizes = []
        for n in ns:
            sizes.append(prepare_size(tmp, args, config_dict, model_dir, n))
            print(f"  N={n}: history built in {sizes[-1].info['setup']:.1f} s", flush=True)
        for r in range(args.repeats):  # interleaved, so a noisy moment does not fall on one size
            for size in sizes:
                data_round(size)
            print(f"  data stages, round {r + 1} done", flush=True)
        for _ in range(args.repeats):
            for size in sizes:
                registry_round(size)
        print_tables(sizes)
    finally:
        if args.keep:
            print(f"\nworkspaces kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nwall time: {time.perf_counter() - began:.1f} s")


if __name__ == "__main__":
    main()
