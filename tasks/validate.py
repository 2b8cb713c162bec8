"""Validate a prepared batch with a Great Expectations 1.x suite built in code.

GX has no expectation for "the same text carries two labels", so that check is made
expressible by adding a helper column (`_labels_per_text`) that an ordinary GX expectation
then bounds; helper columns start with "_" and never reach the stored batch.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from tasks.config import KaizenConfig
from tasks.ingest import normalise_text

SUITE_NAME = "kaizen_batch"


@dataclass(frozen=True)
class ExpectationOutcome:
    name: str
    expectation: str
    column: str | None
    success: bool
    detail: str


@dataclass(frozen=True)
class ValidationReport:
    success: bool
    rows: int
    outcomes: list[ExpectationOutcome] = field(default_factory=list)
    checked_at: str = ""

    @property
    def failures(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success]

    def failure_lines(self) -> list[str]:
        return [f"{o.name}: {o.detail}" for o in self.failures]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, default=str)


def add_helper_columns(batch: pd.DataFrame) -> pd.DataFrame:
    """Columns that let plain GX expectations check row-group properties."""
    frame = batch.copy()
    text = frame["text"] if "text" in frame else pd.Series([None] * len(frame), dtype=object)
    frame["_text_stripped"] = text.map(lambda t: t.strip() if isinstance(t, str) else None)
    # Blank texts are reported by their own expectation, not as a conflict among themselves.
    norm = text.map(lambda t: (normalise_text(t) or None) if isinstance(t, str) else None)
    if "label" in frame:
        labels_per_text = (
            pd.DataFrame({"norm": norm, "label": frame["label"]})
            .groupby("norm", dropna=True)["label"]
            .transform("nunique")
        )
        frame["_labels_per_text"] = labels_per_text.fillna(1).astype(int)
    return frame


def build_expectations(config: KaizenConfig) -> list[tuple[str, object]]:
    """(name, expectation) pairs; the names are what a data engineer reads in a failure."""
    import great_expectations as gx

    e = gx.expectations
    v = config.validation
    return [
        ("text column present", e.ExpectColumnToExist(column="text")),
        ("label column present", e.ExpectColumnToExist(column="label")),
        (f"at least {v.min_rows} rows", e.ExpectTableRowCountToBeBetween(min_value=v.min_rows)),
        ("text not null", e.ExpectColumnValuesToNotBeNull(column="text")),
        (
            "text not empty after stripping",
            e.ExpectColumnValueLengthsToBeBetween(column="_text_stripped", min_value=1),
        ),
        (
            f"text at most {v.max_text_chars} characters",
            e.ExpectColumnValueLengthsToBeBetween(column="text", max_value=v.max_text_chars),
        ),
        ("label not null", e.ExpectColumnValuesToNotBeNull(column="label")),
        (
            "label in declared label set",
            e.ExpectColumnValuesToBeInSet(column="label", value_set=list(config.labels)),
        ),
        (
            "no text with two labels",
            e.ExpectColumnValuesToBeBetween(column="_labels_per_text", max_value=1),
        ),
    ]


def _detail(result: dict) -> str:
    res = result.get("result") or {}
    exc = (result.get("exception_info") or {})
    if exc.get("raised_exception"):
        message = str(exc.get("exception_message") or "").splitlines()
        return f"could not be evaluated: {message[0] if message else 'error'}"
    if "observed_value" in res:
        return f"observed {res['observed_value']}"
    count = res.get("unexpected_count")
    if count is not None:
        sample = list(dict.fromkeys(map(str, res.get("partial_unexpected_list") or [])))
        shown = ", ".join(repr(s)[:60] for s in sample[:3])
        return f"{count} unexpected row(s) ({res.get('unexpected_percent', 0):.1f}%), e.g. {shown}"
    return "failed"


def validate_batch(batch: pd.DataFrame, config: KaizenConfig) -> ValidationReport:
    """Run the suite on the whole batch; collect every outcome, never stop at the first."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # GX logs every expectation that cannot be evaluated at ERROR level (we report those
    # ourselves) and chats at INFO; some of its modules set their own levels.
    for name in [n for n in logging.root.manager.loggerDict if n.startswith("great_expectations")] + ["great_expectations"]:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    frame = add_helper_columns(batch)
    named = build_expectations(config)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    asset = context.data_sources.add_pandas("kaizen").add_dataframe_asset("batch")
    definition = asset.add_batch_definition_whole_dataframe("whole")
    suite = context.suites.add(gx.ExpectationSuite(name=SUITE_NAME))
    names = {}
    for name, expectation in named:
        names[suite.add_expectation(expectation).id] = name
    run = context.validation_definitions.add(
        gx.ValidationDefinition(name="kaizen_validation", data=definition, suite=suite)
    )
    result = run.run(batch_parameters={"dataframe": frame}).to_json_dict()
    outcomes = []
    # GX does not return results in suite order; match them by expectation id.
    for res in result["results"]:
        config_dict = res["expectation_config"]
        outcomes.append(
            ExpectationOutcome(
                name=names[config_dict["id"]],
                expectation=config_dict["type"],
                column=(config_dict.get("kwargs") or {}).get("column"),
                success=bool(res["success"]),
                detail="ok" if res["success"] else _detail(res),
            )
        )
    order = {name: i for i, name in enumerate(names.values())}
    outcomes.sort(key=lambda o: order[o.name])
    return ValidationReport(
        success=all(o.success for o in outcomes),
        rows=int(len(batch)),
        outcomes=outcomes,
        checked_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def quarantine_batch(root: Path, batch_id: str, batch: pd.DataFrame, report: ValidationReport, source: str) -> Path:
    """Keep a rejected batch with its report; it never reaches data/ or training."""
    target = root / batch_id
    target.mkdir(parents=True, exist_ok=True)
    batch.to_parquet(target / "batch.parquet", index=False)
    (target / "report.json").write_text(report.to_json())
    (target / "source.txt").write_text(source + "\n")
    return target


def validate_file(path: Path | str, config: KaizenConfig) -> ValidationReport:
    return validate_batch(pd.read_parquet(path), config)


def quarantine_staged(root: Path, staged, report: ValidationReport) -> Path:
    """Move a staged batch that failed validation into quarantine, with its report."""
    target = quarantine_batch(root, staged.batch_id, pd.read_parquet(staged.path), report, staged.source)
    Path(staged.path).unlink(missing_ok=True)
    return target
