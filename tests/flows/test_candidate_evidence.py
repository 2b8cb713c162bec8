"""A challenger the gate cannot judge yet is held as the candidate, and the next batch's fresh
test split adds evidence until the gate decides (through the real flow, tiny encoder)."""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.slow]


@pytest.fixture(scope="module")
def stream(tmp_path_factory, prefect_harness):
    import pandas as pd

    from flows.pipeline import continual_training
    from tasks.demo_data import GADGET, RESTAURANT, make_domain_batch
    from tests.conftest import TINY_CONFIG, make_workspace

    # Both domains from the start, so later challengers tie with the champion. ~80 test rows
    # in the first batch (regression) but ~40 per later batch (`new`): with min_evidence_rows
    # 60, one later batch cannot resolve the margin (hold); two can (then: no gain shown).
    settings = {**TINY_CONFIG, "gate": {**TINY_CONFIG["gate"], "min_evidence_rows": 60}}
    root = make_workspace(tmp_path_factory.mktemp("candidate") / "ws", settings)

    def mixed(rows: int, seed: int):
        return pd.concat(
            [
                make_domain_batch(RESTAURANT, "restaurants", rows // 2, seed),
                make_domain_batch(GADGET, "gadgets", rows // 2, seed + 100),
            ],
            ignore_index=True,
        )

    batches = {"mixed-1": mixed(800, 21), "mixed-2": mixed(400, 22), "mixed-3": mixed(400, 23)}
    summaries = {}
    for batch_id, frame in batches.items():
        path = root.parent / f"{batch_id}.csv"
        frame.to_csv(path, index=False)
        summaries[batch_id] = continual_training(files=[str(path)], batch_ids=[batch_id], workspace=str(root))
        if batch_id == "mixed-2":
            summaries["status after hold"] = _status(root)
    return root, summaries


def _status(root) -> dict:
    import contextlib
    import io

    from flows.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["status", "--json", "--workspace", str(root)]) == 0
    return json.loads(out.getvalue())


def _ledger(root):
    from tasks.context import Context
    from tasks.registry import read_ledger

    ctx = Context.open(root)
    return ctx, read_ledger(ctx.client, ctx.model_name)


def test_underpowered_challenger_is_held_as_candidate(stream):
    root, summaries = stream
    held = summaries["mixed-2"]
    assert summaries["mixed-1"]["status"] == "promoted"
    assert held["status"] == "held" and held["verdict"] == "hold", held
    assert any("underpowered" in reason for reason in held["reasons"]), held["reasons"]
    assert held["champion_after"] == "1" and held["pending"] == [] and held["withdrawn"] == []
    status = summaries["status after hold"]
    assert status["champion"]["version"] == "1"
    assert status["candidate"]["version"] == held["version"] == "2"
    assert status["candidate"]["looks"] == 1 and status["last_run"]["verdict"] == "hold"


def test_fresh_split_adds_evidence_and_the_gate_decides(stream):
    from tasks.lineage import Lineage
    from tasks.registry import get_version

    root, summaries = stream
    look = summaries["mixed-3"]["candidate"]
    # Pooled over both fresh splits the set has power, and it shows no gain: rejected.
    assert look["version"] == "2" and look["outcome"] == "rejected" and look["verdict"] == "reject", look
    assert look["rows"] >= 60
    ctx, ledger = _ledger(root)
    actions = [(e.action, e.from_version, e.to_version) for e in ledger]
    assert (
        actions
        == [("promote", None, "1"), ("hold", "1", "2"), ("evidence", "1", "2"), ("drop-candidate", "1", "2")]
        + actions[4:]
    )
    v2 = Lineage.from_tags(get_version(ctx.client, ctx.model_name, "2").tags)
    assert v2.evidence_batches == ["mixed-2", "mixed-3"] and len(v2.evidence_runs) == 2
    assert v2.batches_pending and v2.gate_verdict == "reject"


def test_a_dropped_candidates_batches_train_the_next_challenger(stream):
    from tasks.lineage import Lineage
    from tasks.registry import CANDIDATE, get_alias, get_version

    root, summaries = stream
    after = summaries["mixed-3"]
    assert after["champion_before"] == "1" and after["version"] == "3"
    ctx, _ = _ledger(root)
    v3 = Lineage.from_tags(get_version(ctx.client, ctx.model_name, "3").tags)
    assert v3.new_batches == ["mixed-2", "mixed-3"] and v3.parent_version == "1"
    candidate = get_alias(ctx.client, ctx.model_name, CANDIDATE)
    assert (candidate is not None and candidate.version == "3") == (after["status"] == "held")
