"""The Great Expectations suite against real good data and real bad batches."""

from __future__ import annotations

import pandas as pd

from tasks.config import KaizenConfig
from tasks.ingest import prepare_batch
from tasks.validate import validate_batch
from tests.conftest import SHARED

CONFIG = KaizenConfig(labels=["negative", "positive"], validation={"min_rows": 50, "max_text_chars": 2000})


def _sst2(rows: int = 300, offset: int = 0) -> pd.DataFrame:
    frame = pd.read_csv(SHARED / "sst2" / "validation.csv", dtype=str, keep_default_na=False)
    frame = frame.iloc[offset : offset + rows].copy()
    frame["label"] = frame["label"].map({"0": "negative", "1": "positive"})
    return frame


def _failed(frame: pd.DataFrame, config: KaizenConfig = CONFIG) -> dict[str, str]:
    report = validate_batch(prepare_batch(frame, config, "test.csv"), config)
    return {o.name: o.detail for o in report.failures}


def test_real_sst2_slice_passes():
    report = validate_batch(prepare_batch(_sst2(), CONFIG, "sst2"), CONFIG)
    assert report.success, report.failure_lines()
    assert len(report.outcomes) >= 9 and report.rows == 300


def test_unknown_label_is_named():
    frame = _sst2()
    frame.loc[frame.index[:30], "label"] = "neutral"
    failed = _failed(frame)
    assert list(failed) == ["label in declared label set"]
    assert (
        "30 unexpected" in failed["label in declared label set"] and "neutral" in failed["label in declared label set"]
    )


def test_blank_and_null_text_are_named():
    frame = _sst2()
    frame.loc[frame.index[:3], "text"] = "  \t "
    frame.loc[frame.index[3], "text"] = None
    failed = _failed(frame)
    assert "text not empty after stripping" in failed and "text not null" in failed


def test_null_label_is_named():
    frame = _sst2()
    frame.loc[frame.index[0], "label"] = None
    assert "label not null" in _failed(frame)


def test_too_few_rows_is_named():
    failed = _failed(_sst2(rows=20))
    assert list(failed) == ["at least 50 rows"]
    assert "20" in failed["at least 50 rows"]


def test_same_text_with_two_labels_is_named():
    frame = _sst2()
    twin = frame.iloc[[0]].copy()
    twin["label"] = "negative" if frame.iloc[0]["label"] == "positive" else "positive"
    twin["text"] = "  " + twin["text"].str.upper() + " "  # same text after normalisation
    failed = _failed(pd.concat([frame, twin], ignore_index=True))
    assert list(failed) == ["no text with two labels"]


def test_overlong_text_is_named():
    frame = _sst2()
    frame.loc[frame.index[0], "text"] = "word " * 1000
    assert list(_failed(frame)) == ["text at most 2000 characters"]


def test_sms_spam_is_refused_for_encoding_debris_and_duplicates():
    """The real noisy set: cp1252 debris (U+0092 apostrophes), HTML entities, 414 duplicates."""
    from tasks.demo_data import read_labelled

    frame = read_labelled(SHARED / "sms_spam" / "all.csv")  # 0/1 named ham/spam from label_names.txt
    failed = _failed(frame, KaizenConfig(labels=["ham", "spam"]))
    assert list(failed) == ["encoding debris in at most 1% of rows", "duplicates at most 5% of rows"]
    assert failed["encoding debris in at most 1% of rows"].startswith("344 unexpected row(s) (6.2%)")
    assert failed["duplicates at most 5% of rows"].startswith("415 unexpected row(s) (7.4%)")


def test_real_sst2_train_conflicting_labels_are_found():
    # SST-2 train ships 5 texts that carry both labels (10 rows).
    frame = pd.read_csv(SHARED / "sst2" / "train.csv", dtype=str, keep_default_na=False)
    failed = _failed(frame, KaizenConfig(labels=["0", "1"]))
    assert list(failed) == ["no text with two labels"]
    assert failed["no text with two labels"].startswith("10 unexpected row(s)")
