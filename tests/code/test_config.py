from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from tasks.config import (
    ConfigError,
    ConfigRow,
    KaizenConfig,
    describe_config,
    format_config_rows,
    load_config,
    parse_override,
)

REPO = Path(__file__).resolve().parents[2]

# Keys each infra file type must have, so a broken deployment or stack file fails here.
INFRA_REQUIRED_KEYS = {"prefect.yaml": {"deployments"}, "docker-compose.yml": {"services"}}


def _leaves(tree: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _models(model: type[BaseModel]) -> Iterator[type[BaseModel]]:
    yield model
    for info in model.model_fields.values():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            yield from _models(info.annotation)


def test_shipped_config_file_is_what_the_config_uses():
    path = REPO / "kaizen.yaml"
    written = dict(_leaves(yaml.safe_load(path.read_text())))
    effective = dict(_leaves(load_config(path.parent, environ={}).model_dump()))
    assert len(written) > 10
    for key, value in written.items():
        assert key in effective, key
        assert effective[key] == value, key


@pytest.mark.parametrize("path", sorted((REPO / "infra").rglob("*.y*ml")), ids=lambda p: p.name)
def test_infra_yaml_files_have_their_required_keys(path):
    documents = list(yaml.safe_load_all(path.read_text()))
    assert documents and all(isinstance(d, dict) and d for d in documents), path
    required = INFRA_REQUIRED_KEYS.get(path.name, set())
    assert required <= set(documents[0]), f"{path} lacks {required - set(documents[0])}"


def test_prefect_deployments_name_an_existing_entrypoint():
    deployments = yaml.safe_load((REPO / "infra" / "prefect.yaml").read_text())["deployments"]
    assert deployments
    for deployment in deployments:
        assert deployment.get("name"), deployment
        # Module paths (the worker runs in the workspace directory, with kaizen installed).
        module, _, flow = deployment["entrypoint"].partition(":")
        assert flow and (REPO / (module.replace(".", "/") + ".py")).is_file(), deployment["entrypoint"]
        assert f"def {flow}(" in (REPO / (module.replace(".", "/") + ".py")).read_text(), deployment["entrypoint"]


def test_compose_services_each_have_an_image_or_build():
    services = yaml.safe_load((REPO / "infra" / "docker-compose.yml").read_text())["services"]
    assert services and all(spec.get("image") or spec.get("build") for spec in services.values()), services


def test_defaults_without_file(tmp_path):
    config = load_config(tmp_path, environ={})
    assert config.model.base == "minilm"
    assert config.data.split.train == pytest.approx(0.8)


def test_precedence_file_env_override(tmp_path):
    (tmp_path / "kaizen.yaml").write_text("train:\n  epochs: 5\n  lr: 0.001\n")
    config = load_config(
        tmp_path, {"train.epochs": 7}, environ={"KAIZEN_TRAIN__LR": "0.01", "KAIZEN_TRAIN__EPOCHS": "6"}
    )
    assert config.train.epochs == 7  # override beats env beats file
    assert config.train.lr == pytest.approx(0.01)


def test_invalid_value_names_the_field(tmp_path):
    (tmp_path / "kaizen.yaml").write_text("train:\n  epochs: many\n")
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        load_config(tmp_path, environ={})


def test_unknown_task_names_the_tasks_there_are(tmp_path):
    (tmp_path / "kaizen.yaml").write_text("task: regression\n")
    with pytest.raises(ConfigError, match=r"task.*unknown task 'regression'; kaizen has classification"):
        load_config(tmp_path, environ={})


def test_a_causal_lm_defaults_to_smollm2_with_lora_unless_told_otherwise(tmp_path):
    (tmp_path / "kaizen.yaml").write_text("task: causal-lm\n")
    config = load_config(tmp_path, environ={})
    assert (config.model.base, config.train.lora.enabled) == ("smollm2", True)
    told = load_config(tmp_path, {"model.base": "tiny-gpt", "train.lora.enabled": False}, environ={})
    assert (told.model.base, told.train.lora.enabled) == ("tiny-gpt", False)
    (tmp_path / "kaizen.yaml").write_text("task: token-classification\n")
    assert load_config(tmp_path, environ={}).model.base == "minilm"


def test_unknown_field_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.epocs"):
        load_config(tmp_path, {"train.epocs": 3}, environ={})


def test_split_must_sum_to_one(tmp_path):
    # A model-level error names the layers of the section's keys.
    with pytest.raises(ConfigError, match=r"^--set data\.split\.train=0\.5: data\.split: .*must be 1\.0"):
        load_config(tmp_path, {"data.split.train": 0.5}, environ={})


def test_parse_override_reads_yaml_values():
    assert parse_override("train.epochs=2") == ("train.epochs", 2)
    assert parse_override("labels=[a, b]") == ("labels", ["a", "b"])
    with pytest.raises(ConfigError):
        parse_override("no-equals-sign")


def test_fingerprint_changes_with_config(tmp_path):
    a = load_config(tmp_path, environ={})
    b = load_config(tmp_path, {"train.epochs": 9}, environ={})
    assert a.fingerprint() != b.fingerprint()
    assert a.fingerprint() == load_config(tmp_path, environ={}).fingerprint()


def test_committed_data_pointer_is_the_empty_data_directory():
    """A fresh clone has no data and no remote content: the committed data.dvc must not name
    a data version it cannot obtain (a demo run rewrites the working copy, not HEAD)."""
    import subprocess

    shown = subprocess.run(["git", "show", "HEAD:data.dvc"], check=False, cwd=REPO, capture_output=True, text=True)
    text = shown.stdout if shown.returncode == 0 else (REPO / "data.dvc").read_text()
    out = yaml.safe_load(text)["outs"][0]
    assert out["md5"] == "d751713988987e9331980363e24189ce.dir" and out["nfiles"] == 0


def test_error_names_the_override(tmp_path):
    with pytest.raises(ConfigError) as raised:
        load_config(tmp_path, {"train.epochs": -1}, environ={})
    assert str(raised.value) == "--set train.epochs=-1: train.epochs: Input should be greater than or equal to 1"


def test_error_names_the_environment_variable(tmp_path):
    (tmp_path / "kaizen.yaml").write_text("train:\n  epochs: 5\n")
    with pytest.raises(ConfigError, match=r"^environment variable KAIZEN_TRAIN__EPOCHS: train\.epochs: .*greater"):
        load_config(tmp_path, environ={"KAIZEN_TRAIN__EPOCHS": "-1"})


def test_error_names_the_file(tmp_path):
    (tmp_path / "kaizen.yaml").write_text("train:\n  epochs: 0\nproject: ok\n")
    with pytest.raises(ConfigError) as raised:
        load_config(tmp_path, {"project": "fine"}, environ={"KAIZEN_TRAIN__LR": "0.1"})
    assert str(raised.value).startswith(f"{tmp_path / 'kaizen.yaml'}: train.epochs: ")


def test_each_error_names_its_own_layer(tmp_path):
    (tmp_path / "kaizen.yaml").write_text("train:\n  epochs: 0\n")
    with pytest.raises(ConfigError) as raised:
        load_config(tmp_path, {"train.lr": -1}, environ={"KAIZEN_TRAIN__PATIENCE": "0"})
    parts = str(raised.value).split("; ")
    assert sorted(p.split(": ")[0] for p in parts) == sorted(
        ["--set train.lr=-1", "environment variable KAIZEN_TRAIN__PATIENCE", str(tmp_path / "kaizen.yaml")]
    )


def test_unknown_environment_variables_are_named(tmp_path):
    with pytest.raises(ConfigError) as raised:
        load_config(tmp_path, environ={"KAIZEN_TRAIN__EPOCS": "2", "KAIZEN_NOPE": "1"})
    message = str(raised.value)
    assert "environment variable KAIZEN_TRAIN__EPOCS: train.epocs: Extra inputs" in message
    assert "environment variable KAIZEN_NOPE: nope: Extra inputs" in message


def test_workspace_and_user_variables_are_not_config(tmp_path):
    config = load_config(tmp_path, environ={"KAIZEN_WORKSPACE": "/elsewhere", "KAIZEN_USER": "me", "HOME": "/"})
    assert config == load_config(tmp_path, environ={})


def test_environment_values_are_parsed_through_pydantic_settings(tmp_path):
    environ = {
        "KAIZEN_TRAIN__EPOCHS": "2",
        "KAIZEN_LABELS": "[a, b, c]",
        "KAIZEN_TRAIN__LORA__TARGET_MODULES": "[query, key]",
        "KAIZEN_EVALUATE__LENGTH_BUCKETS": "[8, 32]",
        "kaizen_gate__max_ece": "0.2",  # names are case-insensitive
        "KAIZEN_VALIDATION__DRIFT__LABEL_TVD": "{threshold: 0.5, severity: fail}",
    }
    config = load_config(tmp_path, environ=environ)
    assert config.train.epochs == 2
    assert config.labels == ["a", "b", "c"]
    assert config.train.lora.target_modules == ["query", "key"]
    assert config.evaluate.length_buckets == [8, 32]
    assert config.gate.max_ece == pytest.approx(0.2)
    assert (config.validation.drift.label_tvd.threshold, config.validation.drift.label_tvd.severity) == (0.5, "fail")


def test_os_environ_is_read_when_no_environment_is_given(tmp_path, monkeypatch):
    monkeypatch.setenv("KAIZEN_TRAIN__EPOCHS", "5")
    assert load_config(tmp_path).train.epochs == 5


def test_describe_config_names_the_source_of_each_field(tmp_path):
    (tmp_path / "kaizen.yaml").write_text("train:\n  epochs: 5\n  lr: 0.001\n  batch_size: 8\n")
    rows = describe_config(tmp_path, {"train.batch_size": 16}, environ={"KAIZEN_TRAIN__LR": "0.01"})
    by_field = {row.field: row for row in rows}
    assert (by_field["train.epochs"].value, by_field["train.epochs"].source) == (5, "kaizen.yaml")
    assert (by_field["train.lr"].value, by_field["train.lr"].source) == (0.01, "env KAIZEN_TRAIN__LR")
    assert (by_field["train.batch_size"].value, by_field["train.batch_size"].source) == (16, "--set")
    assert (by_field["train.seed"].value, by_field["train.seed"].source) == (13, "default")
    assert all(row.help.strip() for row in rows), [row.field for row in rows if not row.help.strip()]


def test_describe_config_lists_every_leaf_field_in_model_order(tmp_path):
    rows = describe_config(tmp_path, environ={})
    assert [row.field for row in rows] == [key for key, _ in _leaves(KaizenConfig().model_dump())]
    assert {row.source for row in rows} == {"default"}


def test_every_config_field_has_a_description():
    missing = [
        f"{model.__name__}.{name}"
        for model in _models(KaizenConfig)
        for name, info in model.model_fields.items()
        if not (info.description or "").strip()
    ]
    assert not missing


def test_format_config_rows_aligns_the_columns():
    rows = [ConfigRow("train.epochs", 2, "--set", "Passes"), ConfigRow("labels", ["a", "b"], "default", "Labels")]
    lines = format_config_rows(rows).splitlines()
    assert len(lines) == 3
    assert lines[1].split() == ["train.epochs", "2", "--set", "Passes"]
    assert lines[2].split()[:2] == ["labels", '["a",']
    for column in ("VALUE", "SOURCE", "HELP"):
        start = lines[0].index(column)
        assert all(line[start - 2 : start] == "  " and line[start] != " " for line in lines[1:]), column
