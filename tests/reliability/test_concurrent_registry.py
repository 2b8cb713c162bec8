"""Eight processes registering versions against one SQLite MLflow store at the same time."""

from __future__ import annotations

import multiprocessing as mp
import queue

import pytest

WRITERS = 8


def _register(workspace: str, run_id: str, model_dir: str, barrier, results) -> None:
    from tasks.context import Context
    from tasks.registry import register_challenger

    ctx = Context.open(workspace)
    barrier.wait(timeout=120)
    try:
        ref = register_challenger(ctx.client, ctx.config, run_id, model_dir, {"kaizen.writer": run_id}, ["a text"])
        results.put((run_id, "ok", ref.version))
    except Exception as exc:  # noqa: BLE001 - the test reports whatever surfaced to the caller
        results.put((run_id, "error", f"{type(exc).__name__}: {exc}"))


@pytest.mark.slow
def test_concurrent_registrations_get_distinct_versions_and_valid_aliases(workspace, tmp_path):
    from models.base import save_model
    from models.classifier import build_tiny
    from tasks.config import load_config
    from tasks.registry import CHALLENGER, connect, ensure_experiment, get_alias, list_versions
    from tasks.workspace import Workspace

    ws = Workspace.at(workspace)
    config = load_config(ws.root)
    client = connect(ws, config)
    model_dir = save_model(*build_tiny(config.labels), tmp_path / "m")
    experiment = ensure_experiment(client, ws, config)
    run_ids = [client.create_run(experiment).info.run_id for _ in range(WRITERS)]

    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(WRITERS), ctx.Queue()
    procs = [
        ctx.Process(target=_register, args=(str(workspace), run_id, str(model_dir), barrier, results))
        for run_id in run_ids
    ]
    for p in procs:
        p.start()
    outcomes = []
    for _ in procs:
        try:
            outcomes.append(results.get(timeout=300))
        except queue.Empty:
            break
    for p in procs:
        p.join(timeout=60)
    errors = [o for o in outcomes if o[1] != "ok"]
    assert not errors, errors
    assert len(outcomes) == WRITERS and all(p.exitcode == 0 for p in procs)

    name = config.registry.model_name
    # Every writer got its own version; together they are exactly 1..8, none twice, none lost.
    assert sorted(int(o[2]) for o in outcomes) == list(range(1, WRITERS + 1))
    versions = list_versions(client, name)
    assert [int(v.version) for v in versions] == list(range(1, WRITERS + 1))
    assert sorted(v.run_id for v in versions) == sorted(run_ids)
    challenger = get_alias(client, name, CHALLENGER)
    assert challenger is not None and challenger.version in {v.version for v in versions}


def _one_registration(workspace, tmp_path):
    from models.base import save_model
    from models.classifier import build_tiny
    from tasks.config import load_config
    from tasks.registry import connect, ensure_experiment
    from tasks.workspace import Workspace

    ws = Workspace.at(workspace)
    config = load_config(ws.root)
    client = connect(ws, config)
    model_dir = save_model(*build_tiny(config.labels), tmp_path / "m")
    return config, client, model_dir, ensure_experiment(client, ws, config)


class _LockedClient:
    """The real client, but its first `locked` registry writes fail as SQLite does under contention."""

    def __init__(self, client, locked: int):
        self._client, self.locked, self.calls = client, locked, 0
        self._registry_uri = client._registry_uri

    def __getattr__(self, name):
        real = getattr(self._client, name)
        if name not in ("create_model_version", "set_registered_model_alias"):
            return real

        def flaky(*args, **kwargs):
            from mlflow.exceptions import MlflowException

            self.calls += 1
            if self.locked > 0:
                self.locked -= 1
                raise MlflowException("(sqlite3.OperationalError) database is locked")
            return real(*args, **kwargs)

        return flaky


def test_a_concurrent_creator_of_the_registered_model_is_not_an_error(workspace, tmp_path, monkeypatch):
    """Another process creates the registered model between our existence check and our create."""
    import tasks.registry as registry

    config, client, model_dir, experiment = _one_registration(workspace, tmp_path)
    client.create_registered_model(config.registry.model_name)  # the other writer won
    monkeypatch.setattr(registry, "_model_exists", lambda client, name: False)  # we looked before it did
    run = client.create_run(experiment)
    ref = registry.register_challenger(client, config, run.info.run_id, model_dir, {}, ["a text"])
    assert ref.version == "1"


def test_a_locked_store_is_retried_with_backoff(workspace, tmp_path, monkeypatch):
    import tasks.registry as registry

    sleeps: list[float] = []
    monkeypatch.setattr(registry.time, "sleep", sleeps.append)
    config, client, model_dir, experiment = _one_registration(workspace, tmp_path)
    flaky = _LockedClient(client, locked=3)
    ref = registry.register_challenger(flaky, config, client.create_run(experiment).info.run_id, model_dir, {}, ["x"])
    assert ref.version == "1" and len(sleeps) == 3
    assert registry.get_alias(client, config.registry.model_name, registry.CHALLENGER).version == "1"


def test_a_store_that_stays_locked_fails_with_one_line_naming_it(workspace, tmp_path, monkeypatch):
    import tasks.registry as registry

    monkeypatch.setattr(registry.time, "sleep", lambda _: None)
    config, client, model_dir, experiment = _one_registration(workspace, tmp_path)
    flaky = _LockedClient(client, locked=1000)
    with pytest.raises(registry.RegistryError) as caught:
        registry.register_challenger(flaky, config, client.create_run(experiment).info.run_id, model_dir, {}, ["x"])
    message = str(caught.value)
    assert flaky.calls == registry.REGISTRY_TRIES
    assert client._registry_uri in message and "database is locked" in message and "\n" not in message
    assert registry.list_versions(client, config.registry.model_name) == []


def test_losing_the_alias_insert_race_is_retried_and_lands(workspace, tmp_path, monkeypatch):
    """Two writers both see no `challenger` row and both insert it; the loser's unique-key error
    (the failure CI once met with 8 writers) is retried, finds the winner's row and updates it."""
    from mlflow.exceptions import MlflowException

    import tasks.registry as registry

    monkeypatch.setattr(registry.time, "sleep", lambda _: None)
    config, client, model_dir, experiment = _one_registration(workspace, tmp_path)
    name = config.registry.model_name
    first = registry.register_challenger(
        client, config, client.create_run(experiment).info.run_id, model_dir, {}, ["x"]
    )

    class RacingClient(_LockedClient):
        def __getattr__(self, attr):
            real = getattr(self._client, attr)
            if attr != "set_registered_model_alias":
                return real

            def lose_once(*args, **kwargs):
                self.calls += 1
                if self.calls == 1:
                    raise MlflowException(
                        "(sqlite3.IntegrityError) UNIQUE constraint failed: "
                        "registered_model_aliases.name, registered_model_aliases.alias"
                    )
                return real(*args, **kwargs)

            return lose_once

    racing = RacingClient(client, locked=0)
    second = registry.register_challenger(
        racing, config, client.create_run(experiment).info.run_id, model_dir, {}, ["y"]
    )
    assert (first.version, second.version, racing.calls) == ("1", "2", 2)
    assert registry.get_alias(client, name, registry.CHALLENGER).version == "2"
