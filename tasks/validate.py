"""Validate a prepared batch with a Great Expectations 1.x suite built in code, plus drift.

GX has no expectation for row-group properties such as "the same text carries two labels",
"this text already sits in a test split" or "the share of this row's class", so those are made
expressible as helper columns (names starting with "_", never stored) that ordinary GX
expectations then bound. Drift against history is computed from incremental statistics
(tasks/history.py) and reported beside the expectations, each with its own severity.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.config import KaizenConfig
from tasks.ingest import normalise_text

SUITE_NAME = "kaizen_batch"
# Undecodable bytes (read as U+FFFD), the classic UTF-8-read-as-Latin-1 sequences, C1 control
# characters (cp1252 punctuation decoded as Latin-1, e.g. U+0092 for an apostrophe) and HTML
# entities left in exported text.
ENCODING_DEBRIS = re.compile(
    "\ufffd|Ã[\u0080-\u00bf]|â€|Â[\u00a0-\u00bf]|ï¿½|[\u0080-\u009f]|&(?:lt|gt|amp|quot|apos|nbsp|#\\d+);"
)
# The helper columns every family's suite reads; a family adds its own (Family.HELPERS).
HELPERS = ["_text_stripped", "_encoding_debris", "_duplicate", "_leaks_test"]


@dataclass(frozen=True)
class ExpectationOutcome:
    name: str
    expectation: str
    column: str | None
    success: bool
    detail: str
    warning: bool = False  # passed the gate of validation, but worth a look (drift at "warn")


@dataclass(frozen=True)
class ValidationReport:
    success: bool
    rows: int
    outcomes: list[ExpectationOutcome] = field(default_factory=list)
    checked_at: str = ""
    data_docs: str = ""

    @property
    def failures(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success]

    def failure_lines(self) -> list[str]:
        return [f"{o.name}: {o.detail}" for o in self.failures]

    def warning_lines(self) -> list[str]:
        return [f"{o.name}: {o.detail}" for o in self.outcomes if o.warning]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, default=str)


def add_helper_columns(batch: pd.DataFrame, config: KaizenConfig, test_keys: np.ndarray | None = None) -> pd.DataFrame:
    """Columns that let plain GX expectations check row-group properties (the family's too)."""
    from tasks.families import family_of
    from tasks.history import leak_key

    frame = batch.copy()
    text = frame["text"] if "text" in frame else pd.Series([None] * len(frame), dtype=object)
    frame["_text_stripped"] = text.map(lambda t: t.strip() if isinstance(t, str) else None)
    # Blank texts are reported by their own expectation, not as conflicts or duplicates.
    norm = text.map(lambda t: (normalise_text(t) or None) if isinstance(t, str) else None)
    frame["_encoding_debris"] = text.map(lambda t: bool(ENCODING_DEBRIS.search(t)) if isinstance(t, str) else False)
    frame["_duplicate"] = norm.notna() & norm.duplicated(keep="first")
    family = family_of(config.task)
    if all(c in frame for c in family.COLUMNS):  # a missing column is its own expectation's failure
        for name, column in family.helper_columns(frame, config).items():
            frame[name] = column
    keys = test_keys if test_keys is not None else np.zeros(0, dtype=np.int64)
    if len(keys) and "split" in frame:
        # keys are kept sorted: a binary search per row, so the cost grows with the batch only
        # logarithmically with history.
        row_keys = np.fromiter(
            (leak_key(t) if isinstance(t, str) else -1 for t in text), dtype=np.int64, count=len(text)
        )
        found = keys[np.minimum(np.searchsorted(keys, row_keys), len(keys) - 1)] == row_keys
        frame["_leaks_test"] = pd.Series(found, index=frame.index) & (frame["split"] != "test")
    else:
        frame["_leaks_test"] = False
    return frame


def build_expectations(config: KaizenConfig, columns: list[str]) -> list[tuple[str, object]]:
    """(name, expectation) pairs; the names are what a data engineer reads in a failure."""
    import great_expectations as gx

    from tasks.families import family_of

    e = gx.expectations
    v = config.validation
    family = family_of(config.task)
    named = []
    if not v.allow_extra_columns:
        own = list(dict.fromkeys(["text", "label", *family.COLUMNS, "split"]))
        allowed = own + [c for c in config.data.slice_columns if c in columns]
        helpers = HELPERS + [h for h in family.HELPERS if h in columns]
        named.append(
            ("no unexpected columns", e.ExpectTableColumnsToMatchSet(column_set=allowed + helpers, exact_match=True))
        )
    named += [
        ("text column present", e.ExpectColumnToExist(column="text")),
        (f"at least {v.min_rows} rows", e.ExpectTableRowCountToBeBetween(min_value=v.min_rows)),
        ("text not null", e.ExpectColumnValuesToNotBeNull(column="text")),
        ("text not empty after stripping", e.ExpectColumnValueLengthsToBeBetween(column="_text_stripped", min_value=1)),
        (
            f"text at most {v.max_text_chars} characters",
            e.ExpectColumnValueLengthsToBeBetween(column="text", max_value=v.max_text_chars),
        ),
        (
            f"encoding debris in at most {v.max_encoding_debris_rate:.0%} of rows",
            e.ExpectColumnValuesToBeInSet(
                column="_encoding_debris", value_set=[False], mostly=1 - v.max_encoding_debris_rate
            ),
        ),
        (
            f"duplicates at most {v.max_duplicate_rate:.0%} of rows",
            e.ExpectColumnValuesToBeInSet(column="_duplicate", value_set=[False], mostly=1 - v.max_duplicate_rate),
        ),
        (
            "no text already in an earlier test split",
            e.ExpectColumnValuesToBeInSet(column="_leaks_test", value_set=[False]),
        ),
    ]
    return named + family.expectations(config)


def _detail(result: dict) -> str:
    res = result.get("result") or {}
    exc = result.get("exception_info") or {}
    if exc.get("raised_exception"):
        message = str(exc.get("exception_message") or "").splitlines()
        return f"could not be evaluated: {message[0] if message else 'error'}"
    details = res.get("details") or {}
    if details.get("mismatched"):
        mismatched = details["mismatched"]
        parts = [f"{k}: {sorted(v)}" for k, v in mismatched.items() if v and not all(c.startswith("_") for c in v)]
        return "; ".join(parts) or f"observed {res.get('observed_value')}"
    if "observed_value" in res:
        return f"observed {res['observed_value']}"
    count = res.get("unexpected_count")
    if count is not None:
        sample = list(dict.fromkeys(map(str, res.get("partial_unexpected_list") or [])))
        shown = ", ".join(repr(s)[:60] for s in sample[:3])
        return f"{count} unexpected row(s) ({res.get('unexpected_percent', 0):.1f}%), e.g. {shown}"
    return "failed"


def _quiet_gx() -> None:
    # GX logs every expectation that cannot be evaluated at ERROR level (we report those
    # ourselves) and chats at INFO; some of its modules set their own levels.
    for name in [n for n in logging.root.manager.loggerDict if n.startswith("great_expectations")] + [
        "great_expectations"
    ]:
        logging.getLogger(name).setLevel(logging.CRITICAL)


def run_suite(frame: pd.DataFrame, named: list[tuple[str, object]], docs_dir: Path | None) -> list[ExpectationOutcome]:
    """Run the expectations in an ephemeral GX context; render Data Docs into docs_dir."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    _quiet_gx()
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    asset = context.data_sources.add_pandas("kaizen").add_dataframe_asset("batch")
    definition = asset.add_batch_definition_whole_dataframe("whole")
    suite = context.suites.add(gx.ExpectationSuite(name=SUITE_NAME))
    names = {}
    for name, expectation in named:
        names[suite.add_expectation(expectation).id] = name
    validation = context.validation_definitions.add(
        gx.ValidationDefinition(name="kaizen_validation", data=definition, suite=suite)
    )
    actions = []
    if docs_dir is not None:
        context.add_data_docs_site(
            site_name="kaizen",
            site_config={
                "class_name": "SiteBuilder",
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
        actions.append(gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=["kaizen"]))
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(name="kaizen", validation_definitions=[validation], actions=actions)
    )
    run = checkpoint.run(batch_parameters={"dataframe": frame})
    result = next(iter(run.run_results.values())).to_json_dict()
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
    return [_with_examples(o, frame) for o in sorted(outcomes, key=lambda o: order[o.name])]


def _with_examples(outcome: ExpectationOutcome, frame: pd.DataFrame) -> ExpectationOutcome:
    """A failed helper-column expectation names example rows (the n-th data row of the file)
    with their text, and what the family's rule found in them, not helper values."""
    column = outcome.column or ""
    if outcome.success or not column.startswith("_") or column not in frame or "e.g." not in outcome.detail:
        return outcome
    values = frame[column]
    bad = {
        "_text_stripped": lambda: values.map(lambda v: v == ""),
        "_labels_per_text": lambda: values > 1,
        "_label_share": lambda: values == values.min(),
    }.get(column, lambda: values.map(lambda v: isinstance(v, str) or bool(v)))()
    positions = np.flatnonzero(bad.fillna(False).astype(bool).to_numpy())[:3]
    texts = []
    for i in positions:
        found = values.iloc[i]
        why = f" ({found})" if isinstance(found, str) and found else ""
        texts.append(f"row {i + 1}: {repr(frame['text'].iloc[i])[:60]}{why}")
    if column == "_label_share":
        texts = [repr(str(v)) for v in frame.loc[bad, "label"].unique()[:3]]
    detail = outcome.detail.split(", e.g.")[0] + ", e.g. " + "; ".join(texts)
    return ExpectationOutcome(
        outcome.name, outcome.expectation, outcome.column, outcome.success, detail, outcome.warning
    )


def drift_outcomes(batch: pd.DataFrame, config: KaizenConfig, history, tokenizer) -> list[ExpectationOutcome]:
    from tasks.drift import check_drift
    from tasks.history import batch_stats

    if history is None or tokenizer is None or "label" not in batch or "text" not in batch:
        return []
    outcomes = []
    for d in check_drift(batch_stats(batch, tokenizer), history.stats, config.validation.drift):
        detail = f"{d.statistic} = {d.value:.3f} (threshold {d.threshold:g}, {d.severity})"
        fails = d.drifted and d.severity == "fail"
        outcomes.append(
            ExpectationOutcome(
                f"drift: {d.name}",
                "kaizen_drift",
                None,
                not fails,
                detail if d.drifted else f"ok: {detail}",
                d.drifted and not fails,
            )
        )
    return outcomes


def label_growth_outcomes(batch: pd.DataFrame, config: KaizenConfig) -> list[ExpectationOutcome]:
    from tasks.families import family_of

    # Only where `label` is the submitted class, not a stratum derived from other columns.
    if not config.validation.allow_label_growth or "label" not in family_of(config.task).COLUMNS:
        return []
    new = sorted(set(batch["label"].dropna().astype(str)) - set(config.labels))
    detail = f"new label(s) {new}: add them to `labels` and retrain from the base model" if new else "ok"
    return [ExpectationOutcome("label growth", "kaizen_label_growth", "label", True, detail, bool(new))]


def validate_batch(
    batch: pd.DataFrame,
    config: KaizenConfig,
    extra_columns: list[str] | None = None,
    history=None,
    test_keys: np.ndarray | None = None,
    tokenizer=None,
    docs_dir: Path | None = None,
) -> ValidationReport:
    """Run the whole suite on the whole batch; collect every outcome, never stop at the first."""
    frame = add_helper_columns(batch, config, test_keys)
    for column in extra_columns or []:
        frame[column] = None  # present for the columns check; never stored
    outcomes = run_suite(frame, build_expectations(config, list(frame.columns)), docs_dir)
    outcomes += drift_outcomes(batch, config, history, tokenizer) + label_growth_outcomes(batch, config)
    return ValidationReport(
        success=all(o.success for o in outcomes),
        rows=int(len(batch)),
        outcomes=outcomes,
        checked_at=datetime.now(UTC).isoformat(timespec="seconds"),
        data_docs=str(docs_dir / "index.html") if docs_dir is not None else "",
    )


def validate_staged(ws, staged, config: KaizenConfig, tokenizer) -> ValidationReport:
    """The full suite, drift and leakage against this workspace's history, Data Docs included.

    `tokenizer` is the base model's: drift's unknown-token rate is measured under it.
    """
    from tasks.history import load_history

    history, keys = load_history(ws, tokenizer)
    return validate_batch(
        pd.read_parquet(staged.path),
        config,
        staged.extra_columns,
        history,
        keys,
        tokenizer,
        docs_dir=ws.reports / "data-docs" / staged.batch_id,
    )


def quarantine_staged(ws, staged, report: ValidationReport) -> Path:
    """Move a staged batch that failed validation into quarantine, with its report."""
    from tasks import quarantine

    target = quarantine.put_rows(ws, staged.batch_id, pd.read_parquet(staged.path), report.to_json(), staged.source)
    Path(staged.path).unlink(missing_ok=True)
    return target


def save_report(ws, batch_id: str, report: ValidationReport) -> Path:
    """`.kaizen/reports/validation-<batch>.json`: the report a data team reads first."""
    ws.reports.mkdir(parents=True, exist_ok=True)
    path = ws.reports / f"validation-{batch_id}.json"
    path.write_text(report.to_json())
    return path


def validate_file(ws, config: KaizenConfig, file: Path | str, tokenizer) -> ValidationReport:
    """`kaizen validate`: the ingest suite on a file (drift and leakage against this workspace),
    writing nothing. Raises IngestError for a file that could not even be staged."""
    from tasks.history import load_history
    from tasks.ingest import extra_columns, prepare_batch, read_table

    raw = read_table(file, config.validation.max_file_bytes)
    batch = prepare_batch(raw, config, str(file))
    history, keys = load_history(ws, tokenizer) if ws.manifest.exists() else (None, None)
    return validate_batch(batch, config, extra_columns(raw, config), history, keys, tokenizer)
