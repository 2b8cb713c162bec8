"""Champion moves re-check the champion the decision was made against."""

from __future__ import annotations

import pytest


def test_stale_champion_aborts_the_move(workspace, tmp_path):
    from models.classifier import build_tiny, save_classifier
    from tasks.config import load_config
    from tasks.registry import (CHAMPION, StaleChampionError, connect, ensure_experiment, get_alias, move_champion,
                                read_ledger, register_challenger)
    from tasks.workspace import Workspace

    ws = Workspace.at(workspace)
    config = load_config(ws.root)
    client = connect(ws, config)
    model_dir = save_classifier(*build_tiny(config.labels), tmp_path / "m")
    experiment = ensure_experiment(client, ws, config)
    versions = []
    for _ in range(3):
        run = client.create_run(experiment)
        versions.append(register_challenger(client, config, run.info.run_id, model_dir,
                                            {"kaizen.gate_verdict": "pass"}, ["a text"]).version)
    name = config.registry.model_name
    move_champion(client, ws, name, versions[0], None, "promote", "first")
    move_champion(client, ws, name, versions[1], versions[0], "promote", "gate passed")
    # A decision made while v1 was champion must not land now that v2 is.
    with pytest.raises(StaleChampionError):
        move_champion(client, ws, name, versions[2], versions[0], "promote", "stale")
    assert get_alias(client, name, CHAMPION).version == versions[1]
    assert [e.to_version for e in read_ledger(client, name)] == versions[:2]
