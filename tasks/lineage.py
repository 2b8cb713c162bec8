"""What a model version was trained on, as MLflow tags: built and parsed here only.

Every reader (the cycle planner, `status`, `lineage`, manual promotion, the report) goes
through `Lineage.from_tags`, so a tag is named in exactly one place.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

PREFIX = "kaizen."
# MLflow caps a tag value at 8,000 characters; the reasons are a summary, gate.json has all.
MAX_REASONS_CHARS = 4000


@dataclass(frozen=True)
class Lineage:
    data_md5: str = ""
    batch_ids: list[str] = field(default_factory=list)  # everything learned, ancestors included
    new_batches: list[str] = field(default_factory=list)  # what this version added
    parent_version: str | None = None  # the champion it was warm-started from and compared with
    replayed_rows: int = 0
    dvc_remote: str = ""
    dvc_endpoint: str = ""
    git_sha: str = ""
    config_hash: str = ""
    flow_run_id: str = ""
    gate_verdict: str = ""
    gate_reasons: str = ""
    # A rejected version whose batches stay pending: the next cycle trains on them again.
    batches_pending: bool = False
    # A held candidate's evidence: the runs whose evaluation.json are pooled (its own cycle's
    # first), and the batches whose test splits have been used, so none is counted twice.
    evidence_runs: list[str] = field(default_factory=list)
    evidence_batches: list[str] = field(default_factory=list)
    # sha256 of the registered model.safetensors: every loader refuses weights that differ.
    weights_sha256: str = ""
    # "open" from registration until its cycle has acted on the decision ("done"); a version a
    # killed cycle left open is marked "abandoned" and its batches are trained on again.
    # Versions registered before this was recorded read as "" and count as done.
    cycle_state: str = ""

    def to_tags(self) -> dict[str, str]:
        tags = {}
        for key, raw in asdict(self).items():
            value = tag_value(raw)
            if key == "gate_reasons":
                value = value[:MAX_REASONS_CHARS]
            if value != "" or key in ALWAYS_WRITTEN:
                tags[PREFIX + key] = str(value)
        return tags

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> Lineage:
        def get(key: str) -> str:
            return tags.get(PREFIX + key) or ""

        return cls(
            data_md5=get("data_md5"),
            batch_ids=split_ids(get("batch_ids")),
            new_batches=split_ids(get("new_batches")),
            parent_version=get("parent_version") or None,
            replayed_rows=int(get("replayed_rows") or 0),
            dvc_remote=get("dvc_remote"),
            dvc_endpoint=get("dvc_endpoint"),
            git_sha=get("git_sha"),
            config_hash=get("config_hash"),
            flow_run_id=get("flow_run_id"),
            gate_verdict=get("gate_verdict"),
            gate_reasons=get("gate_reasons"),
            batches_pending=get("batches_pending") == "true",
            evidence_runs=split_ids(get("evidence_runs")),
            evidence_batches=split_ids(get("evidence_batches")),
            weights_sha256=get("weights_sha256"),
            cycle_state=get("cycle_state"),
        )

    @property
    def consumed_batches(self) -> list[str]:
        """The new batches this version used up: not when they stay pending, nor when its cycle
        never finished acting on its decision."""
        return [] if self.batches_pending or self.cycle_state in ("open", "abandoned") else self.new_batches

    def remote(self) -> dict[str, str]:
        """DVC remote settings that restore this version's data."""
        settings = {"url": self.dvc_remote}
        if self.dvc_endpoint:
            settings["endpointurl"] = self.dvc_endpoint
        return settings


# Written even when empty, so a reader can tell "recorded as none" from "never recorded".
ALWAYS_WRITTEN = {
    "data_md5",
    "batch_ids",
    "new_batches",
    "parent_version",
    "replayed_rows",
    "dvc_remote",
    "git_sha",
    "config_hash",
    "flow_run_id",
    "gate_verdict",
}


def tag(field_name: str) -> str:
    """The MLflow tag key of one Lineage field."""
    if field_name not in Lineage.__dataclass_fields__:
        raise KeyError(f"no lineage field {field_name!r}")
    return PREFIX + field_name


# A list longer than this is written compressed: a champion's batch list grows with history,
# MLflow caps a model version's tag value at 100,000 characters, and the planner reads the list
# in one call instead of walking the lineage chain. Plain up to ~2,400 batch ids, compressed
# (about 3x for kaizen's time-stamped ids) to several thousand.
MAX_PLAIN_LIST_CHARS = 60_000
_PACKED = "zlib64:"


def tag_value(value: object) -> str:
    """A field value as its tag writes it (lists comma-joined, booleans "true"/"")."""
    if isinstance(value, list):
        joined = ",".join(value)
        if len(joined) <= MAX_PLAIN_LIST_CHARS:
            return joined
        import base64
        import zlib

        return _PACKED + base64.b64encode(zlib.compress(joined.encode(), 9)).decode()
    if isinstance(value, bool):
        return "true" if value else ""
    return "" if value is None else str(value)


def split_ids(value: str | None) -> list[str]:
    value = value or ""
    if value.startswith(_PACKED):
        import base64
        import zlib

        value = zlib.decompress(base64.b64decode(value[len(_PACKED) :])).decode()
    return [b for b in value.split(",") if b]


def describe_version(ctx, version: str) -> dict:
    """`kaizen lineage VERSION`: what the version was trained on, as plain data."""
    from tasks.registry import get_version

    ref = get_version(ctx.client, ctx.model_name, version)
    lineage = Lineage.from_tags(ref.tags)
    return {
        "version": ref.version,
        "data_md5": lineage.data_md5,
        "batch_ids": lineage.batch_ids,
        "new_batches": lineage.new_batches,
        "parent_version": lineage.parent_version,
        "dvc_remote": lineage.dvc_remote,
        "dvc_endpoint": lineage.dvc_endpoint or None,
        "git_sha": lineage.git_sha,
        "config_hash": lineage.config_hash,
        "flow_run_id": lineage.flow_run_id,
        "mlflow_run_id": ref.run_id,
    }


def checkout_data(ctx, version: str, target) -> str:
    """Restore exactly the data `version` was trained on from its DVC remote into `target`."""
    from tasks.registry import get_version
    from tasks.versioning import checkout_version

    lineage = Lineage.from_tags(get_version(ctx.client, ctx.model_name, version).tags)
    return str(checkout_version(lineage.data_md5, lineage.remote(), target))
