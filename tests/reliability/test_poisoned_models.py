"""A registered version whose artifacts hold a pickle, or whose weights differ from what was
registered, is refused by every loader: the registry client (warm start, evaluation), the
MLflow pyfunc (served models) and `kaizen predict`, each naming the version and the file."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

import pandas as pd
import pytest

TEXTS = ["The soup was delicious.", "The battery died after a day."]


@pytest.fixture
def registered(workspace, tmp_path):
    """Three versions of one tiny classifier, registered the way a cycle registers them."""
    from models.base import save_model
    from models.classifier import build_tiny
    from tasks.context import Context
    from tasks.registry import ensure_experiment, register_challenger

    ctx = Context.open(workspace)
    model_dir = save_model(*build_tiny(ctx.config.labels, seed=11), tmp_path / "model")
    experiment = ensure_experiment(ctx.client, ctx.ws, ctx.config)
    versions = []
    for _ in range(3):
        run = ctx.client.create_run(experiment)
        versions.append(register_challenger(ctx.client, ctx.config, run.info.run_id, model_dir, {}, TEXTS).version)
    return ctx, versions


def _stored_classifier(ctx, version: str) -> Path:
    """The version's classifier directory inside the artifact store (.kaizen/mlartifacts/...)."""
    uri = ctx.client.get_model_version_download_uri(ctx.model_name, version)
    parsed = urlparse(uri)
    assert parsed.scheme == "file", f"expected a local artifact store, got {uri}"
    # pyfunc keeps the logged directory as artifacts/<its basename> under the model's root.
    found = list((Path(unquote(parsed.path)) / "artifacts").glob("*/model.safetensors"))
    assert len(found) == 1, found
    assert ctx.ws.mlflow_artifacts in found[0].parents
    return found[0].parent


def _swap_weights(ctx, version: str, tmp_path: Path) -> None:
    """Replace the stored weights with another, valid, safetensors file (a different model)."""
    from models.base import save_model
    from models.classifier import build_tiny

    other = save_model(*build_tiny(ctx.config.labels, seed=99), tmp_path / "other")
    stored = _stored_classifier(ctx, version) / "model.safetensors"
    before = stored.read_bytes()
    stored.write_bytes((other / "model.safetensors").read_bytes())
    assert stored.read_bytes() != before


def _drop_pickle(ctx, version: str) -> None:
    import torch

    torch.save({"payload": torch.zeros(2)}, _stored_classifier(ctx, version) / "pytorch_model.bin")


def test_weights_hash_is_recorded_in_tags_and_model_config(registered):
    from mlflow.models import Model

    from tasks.lineage import Lineage, tag
    from tasks.registry import file_sha256, get_version

    ctx, versions = registered
    ref = get_version(ctx.client, ctx.model_name, versions[0])
    sha = file_sha256(_stored_classifier(ctx, versions[0]) / "model.safetensors")
    assert ref.tags[tag("weights_sha256")] == sha == Lineage.from_tags(ref.tags).weights_sha256
    model_root = _stored_classifier(ctx, versions[0]).parents[1]  # MLmodel sits beside artifacts/
    assert Model.load(model_root).flavors["python_function"]["config"]["weights_sha256"] == sha


def test_swapped_weights_are_refused_by_every_loader(registered, tmp_path, capsys):
    import mlflow

    from flows.cli import main
    from tasks.registry import TamperedModelError, download_version, get_version

    ctx, versions = registered
    tampered = versions[0]
    registered_sha = get_version(ctx.client, ctx.model_name, tampered).tags["kaizen.weights_sha256"]
    _swap_weights(ctx, tampered, tmp_path)

    with pytest.raises(TamperedModelError) as refused:
        download_version(ctx.client, ctx.model_name, tampered, tmp_path / "dl")
    message = str(refused.value)
    assert message.startswith(f"v{tampered}: model.safetensors sha256 ")
    assert f"differs from the registered {registered_sha[:12]}" in message and "refusing to load" in message

    with pytest.raises(TamperedModelError, match=rf"^v{tampered}: model\.safetensors sha256 .* differs"):
        mlflow.pyfunc.load_model(f"models:/{ctx.model_name}/{tampered}")

    capsys.readouterr()
    code = main(["predict", "--version", tampered, "--workspace", str(ctx.ws.root), TEXTS[0]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and err[0].startswith(f"kaizen: error: v{tampered}: model.safetensors sha256 "), err


def test_a_pickle_in_the_artifacts_is_refused(registered, tmp_path):
    import mlflow

    from tasks.registry import TamperedModelError, download_version

    ctx, versions = registered
    poisoned = versions[1]
    _drop_pickle(ctx, poisoned)

    with pytest.raises(TamperedModelError, match=rf"^v{poisoned}: .*pytorch_model\.bin: pickle-format file"):
        download_version(ctx.client, ctx.model_name, poisoned, tmp_path / "dl")
    with pytest.raises(TamperedModelError, match=rf"^v{poisoned}: .*pytorch_model\.bin: pickle-format file"):
        mlflow.pyfunc.load_model(f"models:/{ctx.model_name}/{poisoned}")


def test_a_pickle_instead_of_the_weights_is_named(registered, tmp_path):
    """Weights replaced by a pickle: the refusal names the pickle, not "no classifier found"."""
    from tasks.registry import TamperedModelError, download_version

    ctx, versions = registered
    stored = _stored_classifier(ctx, versions[1])
    _drop_pickle(ctx, versions[1])
    (stored / "model.safetensors").unlink()
    with pytest.raises(TamperedModelError, match=r"pytorch_model\.bin: pickle-format file"):
        download_version(ctx.client, ctx.model_name, versions[1], tmp_path / "dl")


def test_a_version_without_a_recorded_hash_is_refused(registered, tmp_path):
    from tasks.registry import TamperedModelError, download_version

    ctx, versions = registered
    ctx.client.delete_model_version_tag(ctx.model_name, versions[2], "kaizen.weights_sha256")
    with pytest.raises(TamperedModelError, match=rf"^v{versions[2]}: no recorded weights hash"):
        download_version(ctx.client, ctx.model_name, versions[2], tmp_path / "dl")


def test_untouched_versions_still_load_and_predict(registered, tmp_path, capsys):
    import mlflow

    from flows.cli import main
    from tasks.registry import download_version

    ctx, versions = registered
    _swap_weights(ctx, versions[0], tmp_path)
    _drop_pickle(ctx, versions[1])
    intact = versions[2]

    model_dir = download_version(ctx.client, ctx.model_name, intact, tmp_path / "dl")
    assert (model_dir / "model.safetensors").is_file()
    frame = mlflow.pyfunc.load_model(f"models:/{ctx.model_name}/{intact}").predict(pd.DataFrame({"text": TEXTS}))
    assert list(frame.columns[:2]) == ["label", "score"] and len(frame) == len(TEXTS)
    capsys.readouterr()
    assert main(["predict", "--version", intact, "--workspace", str(ctx.ws.root), *TEXTS]) == 0
    assert [line.split("\t")[0] for line in capsys.readouterr().out.strip().splitlines()] == list(frame["label"])


def test_registering_a_directory_with_a_pickle_is_refused(workspace, tmp_path):
    import torch

    from models.base import save_model
    from models.classifier import build_tiny
    from tasks.context import Context
    from tasks.registry import TamperedModelError, ensure_experiment, list_versions, register_challenger

    ctx = Context.open(workspace)
    model_dir = save_model(*build_tiny(ctx.config.labels, seed=11), tmp_path / "model")
    torch.save({"w": torch.zeros(1)}, model_dir / "training_args.bin")
    run = ctx.client.create_run(ensure_experiment(ctx.client, ctx.ws, ctx.config))
    with pytest.raises(TamperedModelError, match=r"training_args\.bin"):
        register_challenger(ctx.client, ctx.config, run.info.run_id, model_dir, {}, TEXTS)
    assert list_versions(ctx.client, ctx.model_name) == []


def test_mlflow_pickle_deserialization_is_off():
    """Every entry point runs with MLflow's own pickle switch off (tasks/runtime.py)."""
    from mlflow.environment_variables import MLFLOW_ALLOW_PICKLE_DESERIALIZATION

    from tasks.runtime import OFFLINE_AND_QUIET

    assert OFFLINE_AND_QUIET["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false"
    assert MLFLOW_ALLOW_PICKLE_DESERIALIZATION.get() is False
