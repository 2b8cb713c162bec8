"""A continual champion against one model trained on all the same rows at once.

  python benchmarks/continual_vs_joint.py [--rows 1500] [--held-out 500] [--into DIR] [--set key=value ...]

A shifted stream from SST-2 train, by phrase length: short (at most 8 words), medium (9 to 19),
long (20 or more), one batch each, replayed in that order through the real cycle (ingest, GX,
DVC, training warm-started from the champion with replay, gate, MLflow registry) in a fresh
workspace with kaizen's defaults. Then one model is trained from the same base, with the same
training settings, on the union of the rows the cycle trained on (every batch's train split; its
validation splits select the checkpoint), the multitask bound every continual result is reported
against. Both are scored on fixed held-out rows of each domain (SST-2 train rows outside the
stream) with the evaluation the cycle's reference accuracy uses.

Printed: every cycle's verdict; accuracy of each promoted version per domain, with its
forgetting (the drop on a domain since the first champion that had seen it); the joint model;
and the final champion's overall accuracy as a share of the joint model's (goal >= 0.95).
Long with the default MiniLM base: run it outside CI.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pandas as pd
from common import LABELS, machine, sst2_frame

DOMAINS = {"short": (1, 8), "medium": (9, 19), "long": (20, 10_000)}


def domain_frames(rows: int, held_out: int, seed: int = 0) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """Per domain: (stream rows, held-out rows), disjoint, text unique across all of them."""
    frame = sst2_frame("train")
    frame["key"] = frame["text"].str.lower().str.replace(r"[\W_]+", "", regex=True)
    frame = frame.drop_duplicates("key").reset_index(drop=True)
    frame["label"] = frame["label"].map(dict(enumerate(LABELS)))
    words = frame["text"].str.split().str.len()
    out = {}
    for name, (low, high) in DOMAINS.items():
        chosen = frame[(words >= low) & (words <= high)].sample(n=rows + held_out, random_state=seed)
        out[name] = chosen.head(rows)[["text", "label"]], chosen.tail(held_out)[["text", "label"]]
    return out


def replay_stream(root: Path, files: list[tuple[str, Path]], overrides: dict) -> list[dict]:
    (root / ".kaizen" / "prefect").mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(root / ".kaizen" / "prefect"))
    from flows.demo import replay_feed
    from tasks.versioning import init_repo
    from tasks.workspace import Workspace

    ws = Workspace.at(root)
    (root / "kaizen.yaml").write_text(f"project: continual-vs-joint\nlabels: {LABELS}\n")
    init_repo(ws)
    feed = [(name, path, f"SST-2 train, {name} phrases") for name, path in files]
    return replay_feed(ws, feed, overrides, echo=lambda line: print(line, flush=True))


def train_joint(root: Path, overrides: dict, out: Path) -> float:
    """The base trained once on every batch's train split; their validation splits select."""
    from tasks.context import Context
    from tasks.evaluate import examples_of
    from tasks.train import train_classifier

    ctx = Context.open(root, overrides)
    config = ctx.config
    rows = pd.concat([pd.read_parquet(p) for p in sorted(ctx.ws.batches.glob("*.parquet"))], ignore_index=True)
    from models.base import load_tokenizer

    tokenizer = load_tokenizer(config.model.base)

    def examples(split: str):
        return examples_of(
            rows[rows["split"] == split].reset_index(drop=True),
            config.labels,
            tokenizer,
            config.model.max_length,
            config.task,
        )

    train, validation = examples("train"), examples("validation")
    print(f"joint: {len(train.ids)} train rows, {len(validation.ids)} validation rows", flush=True)
    started = time.perf_counter()
    train_classifier(
        config.model.base,
        config.labels,
        train,
        validation,
        config.train,
        out,
        log=lambda line: print("   ", line, flush=True),
    )
    return time.perf_counter() - started


def accuracy_of_dir(model_dir: Path, frame_path: Path, config) -> float:
    from tasks.backtest import primary_metric_of
    from tasks.demo_data import read_labelled

    return primary_metric_of(model_dir, read_labelled(frame_path, config.task), config, frame_path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1500, help="rows per domain in the stream")
    parser.add_argument("--held-out", type=int, default=500, help="held-out rows per domain")
    parser.add_argument("--into", type=Path, default=None, help="workspace directory (default: a temporary one)")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="a config override, key=value")
    args = parser.parse_args()
    from tasks.config import parse_override

    overrides = dict(parse_override(s) for s in args.sets)
    scratch = Path(tempfile.mkdtemp(prefix="continual-vs-joint-"))
    root = args.into or scratch / "ws"
    root.mkdir(parents=True, exist_ok=True)
    frames = domain_frames(args.rows, args.held_out)
    files, held = [], {}
    for name, (stream, held_out) in frames.items():
        files.append((name, scratch / f"{name}.csv"))
        stream.to_csv(files[-1][1], index=False)
        held[name] = scratch / f"held-{name}.csv"
        held_out.to_csv(held[name], index=False)
    print(f"machine: {machine()}; {args.rows} rows per domain, {args.held_out} held out; workspace {root}", flush=True)

    started = time.perf_counter()
    results = replay_stream(root, files, overrides)
    stream_secs = time.perf_counter() - started

    from tasks.backtest import reference_accuracies
    from tasks.context import Context

    ctx = Context.open(root, overrides)
    promoted = [r["version"] for r in results if r.get("version") and r.get("champion_after") == r["version"]]
    per_version = {name: reference_accuracies(ctx, set(promoted), held[name], scratch / "ref" / name) for name in held}
    joint_secs = train_joint(root, overrides, scratch / "joint")
    joint = {name: accuracy_of_dir(scratch / "joint", held[name], ctx.config) for name in held}

    print("\n" + "=" * 96)
    print(
        f"{'cycle':<8}{'batch':<8}{'outcome':<12}{'champion':<10}"
        + "".join(f"{n:>10}" for n in held)
        + f"{'overall':>10}"
    )
    seen: list[str] = []
    first_seen: dict[str, float] = {}
    worst: dict[str, float] = {}
    for i, (result, (name, _)) in enumerate(zip(results, files, strict=True)):
        seen.append(name)
        version = result.get("champion_after")
        row = f"{i + 1:<8}{name:<8}{result.get('status', '?'):<12}{('v' + version) if version else '-':<10}"
        if version in promoted:
            accs = {n: per_version[n][version] for n in held}
            row += "".join(f"{accs[n]:>10.4f}" for n in held) + f"{sum(accs.values()) / len(accs):>10.4f}"
            for n in seen[:-1]:
                first_seen.setdefault(n, accs[n])
                worst[version] = max(worst.get(version, 0.0), first_seen[n] - accs[n])
            first_seen.setdefault(name, accs[name])
        print(row)
    final = results[-1].get("champion_after")
    joint_overall = sum(joint.values()) / len(joint)
    print(
        f"{'joint':<8}{'all':<8}{'trained':<12}{'-':<10}"
        + "".join(f"{joint[n]:>10.4f}" for n in held)
        + f"{joint_overall:>10.4f}"
    )
    print("-" * 96)
    for version in promoted:
        print(
            f"forgetting of v{version}: {worst.get(version, 0.0):+.4f} (largest drop on an earlier domain since first seen)"
        )
    if final in promoted:
        final_overall = sum(per_version[n][final] for n in held) / len(held)
        share = final_overall / joint_overall
        print(
            f"final champion v{final}: overall {final_overall:.4f} = {share:.3f} of the joint model's "
            f"{joint_overall:.4f}; goal 0.95 {'met' if share >= 0.95 else 'missed'}"
        )
    else:
        print("no champion at the end: the stream promoted nothing, so there is no ratio to report")
    print(f"stream {stream_secs / 60:.1f} min through the real cycle; joint training {joint_secs / 60:.1f} min")


if __name__ == "__main__":
    main()
