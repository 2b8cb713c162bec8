"""One host's side of the promotion race: `python -m tests.stack.race ROUNDS BARRIER_DIR OUT.json`.

Every round reads `@champion`, then asks to move it to the next version, expecting the one it
read (what a cycle does after its gate). The other host does the same at the same time, so
many attempts find the champion moved meanwhile; those must be refused, and every move that
happens must be in the ledger, from the version it replaced.

The hosts start each round together at a barrier (a file per host and round in BARRIER_DIR):
a clock schedule let them drift apart on a loaded machine, where a round takes longer than its
slot, until they no longer raced at all."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

HOSTS = 2
BARRIER_TIMEOUT_S = 120


def setup(ctx, versions: int) -> list[str]:
    """Register `versions` versions of the race model (each with a logged artifact of its own)."""
    import mlflow

    from tasks.registry import _ensure_registered_model, ensure_experiment, list_versions

    _ensure_registered_model(ctx.client, ctx.model_name)
    existing = [r.version for r in list_versions(ctx.client, ctx.model_name)]
    experiment = ensure_experiment(ctx.client, ctx.ws, ctx.config)
    for i in range(len(existing), versions):
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.log_text(f"race version {i + 1}", "weights.txt")
        ctx.client.create_model_version(ctx.model_name, f"runs:/{run.info.run_id}/weights.txt", run_id=run.info.run_id)
    return [r.version for r in list_versions(ctx.client, ctx.model_name)]


def wait_for_all(barrier: Path, host: str, round_: int) -> None:
    (barrier / f"{round_}-{host}").touch()
    deadline = time.monotonic() + BARRIER_TIMEOUT_S
    while len(list(barrier.glob(f"{round_}-*"))) < HOSTS:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{host}: the other host never reached round {round_}")
        time.sleep(0.002)


def race(ctx, rounds: int, barrier: Path, host: str) -> list[dict]:
    from tasks.promotion import current_champion
    from tasks.registry import StaleChampionError, list_versions, move_champion
    from tasks.shared import champion_guard

    versions = [r.version for r in list_versions(ctx.client, ctx.model_name)]
    attempts = []
    for i in range(rounds):
        wait_for_all(barrier, host, i)  # both hosts start round i together: each reads, then moves
        read_at = time.time()  # the test judges collisions by these windows
        seen = current_champion(ctx)
        target = versions[(versions.index(seen) + 1) % len(versions)] if seen else versions[0]
        why = f"race {host} round {i}"
        try:
            entry = move_champion(ctx.client, champion_guard(ctx), ctx.model_name, target, seen, "manual-promote", why)
            moved = {"moved": True, "seq": entry.seq}
        except StaleChampionError:
            moved = {"moved": False}
        window = {"read_at": read_at, "done_at": time.time()}
        attempts.append({"round": i, "expected": seen, "to": target, **moved, "why": why, **window})
    return attempts


def main(argv: list[str]) -> None:
    from tasks.context import Context
    from tasks.runtime import set_runtime_defaults

    set_runtime_defaults()
    ctx = Context.open(os.getcwd())
    if argv[0] == "setup":
        print(json.dumps(setup(ctx, int(argv[1]))))
        return
    rounds, barrier, out = int(argv[0]), Path(argv[1]), argv[2]
    attempts = race(ctx, rounds, barrier, os.environ["KAIZEN_HOST"])
    with open(out, "w") as f:
        json.dump(attempts, f)


if __name__ == "__main__":
    main(sys.argv[1:])
