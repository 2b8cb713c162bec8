"""Champion moves re-check the champion the decision was made against, across processes."""

from __future__ import annotations

import multiprocessing as mp

import pytest


def _registry_with_versions(workspace, tmp_path, count: int, verdict: str = "pass"):
    from models.base import save_model
    from models.classifier import build_tiny
    from tasks.config import load_config
    from tasks.registry import connect, ensure_experiment, register_challenger
    from tasks.workspace import Workspace

    ws = Workspace.at(workspace)
    config = load_config(ws.root)
    client = connect(ws, config)
    model_dir = save_model(*build_tiny(config.labels), tmp_path / "m")
    experiment = ensure_experiment(client, ws, config)
    versions = []
    for _ in range(count):
        run = client.create_run(experiment)
        versions.append(
            register_challenger(
                client, config, run.info.run_id, model_dir, {"kaizen.gate_verdict": verdict}, ["a text"]
            ).version
        )
    return ws, config, client, config.registry.model_name, versions


def test_stale_champion_aborts_the_move(workspace, tmp_path):
    from tasks.registry import CHAMPION, StaleChampionError, get_alias, move_champion, read_ledger

    ws, _, client, name, versions = _registry_with_versions(workspace, tmp_path, 3)
    move_champion(client, ws, name, versions[0], None, "promote", "first")
    move_champion(client, ws, name, versions[1], versions[0], "promote", "gate passed")
    # A decision made while v1 was champion must not land now that v2 is.
    with pytest.raises(StaleChampionError):
        move_champion(client, ws, name, versions[2], versions[0], "promote", "stale")
    assert get_alias(client, name, CHAMPION).version == versions[1]
    assert [e.to_version for e in read_ledger(client, name)] == versions[:2]


def _race(workspace: str, to_version: str, expected: str, barrier, results) -> None:
    from tasks.context import Context
    from tasks.registry import StaleChampionError, move_champion

    ctx = Context.open(workspace)
    barrier.wait(timeout=60)
    try:
        move_champion(ctx.client, ctx.ws, ctx.model_name, to_version, expected, "promote", f"race to {to_version}")
        results.put((to_version, "moved"))
    except StaleChampionError:
        results.put((to_version, "stale"))


def test_two_processes_racing_never_land_a_stale_decision(workspace, tmp_path):
    from tasks.registry import CHAMPION, get_alias, move_champion, read_ledger

    ws, _, client, name, versions = _registry_with_versions(workspace, tmp_path, 3)
    v1, v2, v3 = versions
    move_champion(client, ws, name, v1, None, "promote", "first")
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    # Both challengers were gated against v1; only one may replace it.
    procs = [ctx.Process(target=_race, args=(str(workspace), v, v1, barrier, results)) for v in (v2, v3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    outcome = dict(results.get(timeout=5) for _ in procs)
    assert sorted(outcome.values()) == ["moved", "stale"], outcome
    winner = next(v for v, o in outcome.items() if o == "moved")
    assert get_alias(client, name, CHAMPION).version == winner
    ledger = read_ledger(client, name)
    assert [(e.from_version, e.to_version) for e in ledger] == [(None, v1), (v1, winner)]


def test_manual_promotion_is_gated_unless_forced(workspace, tmp_path, capsys):
    from flows.cli import main
    from tasks.registry import CHAMPION, get_alias, move_champion, read_ledger

    ws, _, client, name, versions = _registry_with_versions(workspace, tmp_path, 2, verdict="reject")
    move_champion(client, ws, name, versions[0], None, "promote", "first")
    capsys.readouterr()
    args = ["promote", versions[1], "--reason", "hotfix", "--workspace", str(workspace)]
    assert main(args) == 1
    assert "gate verdict is reject" in capsys.readouterr().err
    assert get_alias(client, name, CHAMPION).version == versions[0]
    assert main(args + ["--force"]) == 0
    assert get_alias(client, name, CHAMPION).version == versions[1]
    last = read_ledger(client, name)[-1]
    assert last.action == "forced-promote" and "override: its gate verdict is reject" in last.why


def test_nothing_is_promoted_when_the_shared_lock_cannot_be_reached(workspace, tmp_path):
    """Scaled out, champion moves take a PostgreSQL advisory lock every host shares; if that
    database cannot be reached, the alias and the ledger stay as they were and the error says why."""
    import socket

    from tasks.context import Context
    from tasks.promotion import promote_after_gate, roll_back
    from tasks.registry import CHAMPION, get_alias, move_champion, read_ledger
    from tasks.shared import SharedStoreError

    ws, _, client, name, versions = _registry_with_versions(workspace, tmp_path, 3)
    move_champion(client, ws, name, versions[0], None, "promote", "first")
    move_champion(client, ws, name, versions[1], versions[0], "promote", "second")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    ctx = Context.open(workspace, {"shared.database_url": f"postgresql://kaizen@127.0.0.1:{closed}/kaizen"})
    for attempt in (lambda: promote_after_gate(ctx, versions[2], versions[1]), lambda: roll_back(ctx, "test")):
        with pytest.raises(
            SharedStoreError, match=f"shared database postgresql://127.0.0.1:{closed}/kaizen cannot be reached"
        ):
            attempt()
    assert get_alias(client, name, CHAMPION).version == versions[1]
    assert len(read_ledger(client, name)) == 2


def test_a_password_in_the_shared_database_url_is_refused(workspace):
    from tasks.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="shared.database_url.*PGPASSWORD"):
        load_config(workspace, {"shared.database_url": "postgresql://kaizen:secret@db:5432/kaizen"})
