from pathlib import Path

import pytest
import yaml

from tasks.config import ConfigError, KaizenConfig, load_config, parse_override

REPO = Path(__file__).resolve().parents[2]


def test_shipped_config_files_parse():
    shipped = [REPO / "kaizen.yaml"]
    assert shipped[0].exists()
    for path in shipped:
        config = load_config(path.parent, environ={})
        assert isinstance(config, KaizenConfig)
    # Every YAML file under infra/ is at least valid YAML.
    for path in (REPO / "infra").rglob("*.y*ml"):
        assert list(yaml.safe_load_all(path.read_text())) is not None, path


def test_defaults_without_file(tmp_path):
    config = load_config(tmp_path, environ={})
    assert config.model.base == "minilm"
    assert config.data.split.train == pytest.approx(0.8)


def test_precedence_file_env_override(tmp_path):
    (tmp_path / "kaizen.yaml").write_text("train:\n  epochs: 5\n  lr: 0.001\n")
    config = load_config(tmp_path, {"train.epochs": 7}, environ={"KAIZEN_TRAIN__LR": "0.01", "KAIZEN_TRAIN__EPOCHS": "6"})
    assert config.train.epochs == 7  # override beats env beats file
    assert config.train.lr == pytest.approx(0.01)


def test_invalid_value_names_the_field(tmp_path):
    (tmp_path / "kaizen.yaml").write_text("train:\n  epochs: many\n")
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        load_config(tmp_path, environ={})


def test_unknown_field_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.epocs"):
        load_config(tmp_path, {"train.epocs": 3}, environ={})


def test_split_must_sum_to_one(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.split"):
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

    shown = subprocess.run(["git", "show", "HEAD:data.dvc"], cwd=REPO, capture_output=True, text=True)
    text = shown.stdout if shown.returncode == 0 else (REPO / "data.dvc").read_text()
    out = yaml.safe_load(text)["outs"][0]
    assert out["md5"] == "d751713988987e9331980363e24189ce.dir" and out["nfiles"] == 0
