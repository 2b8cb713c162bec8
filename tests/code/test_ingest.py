import pandas as pd
import pytest

from tasks.config import KaizenConfig
from tasks.ingest import (
    IngestError,
    assign_split,
    check_batch_id,
    content_hash,
    normalise_text,
    prepare_batch,
    read_table,
)


def test_read_table_errors_name_the_file(tmp_path):
    with pytest.raises(IngestError, match="missing.csv: no such file"):
        read_table(tmp_path / "missing.csv")
    (tmp_path / "data.xlsx").write_text("x")
    with pytest.raises(IngestError, match=r"data.xlsx: unknown format '.xlsx'"):
        read_table(tmp_path / "data.xlsx")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(IngestError, match="empty.csv: file is empty"):
        read_table(tmp_path / "empty.csv")
    (tmp_path / "broken.parquet").write_text("not parquet")
    with pytest.raises(IngestError, match="broken.parquet: cannot be read as parquet"):
        read_table(tmp_path / "broken.parquet")


def test_reads_csv_parquet_jsonl_alike(tmp_path):
    frame = pd.DataFrame({"text": ["a b", "NA"], "label": ["positive", "negative"]})
    frame.to_csv(tmp_path / "x.csv", index=False)
    frame.to_parquet(tmp_path / "x.parquet")
    frame.to_json(tmp_path / "x.jsonl", orient="records", lines=True)
    for name in ("x.csv", "x.parquet", "x.jsonl"):
        read = read_table(tmp_path / name)
        assert read["text"].tolist() == ["a b", "NA"], name  # "NA" is text, not a null


def test_prepare_requires_columns_and_rows():
    config = KaizenConfig()
    with pytest.raises(IngestError, match="missing required column.*label"):
        prepare_batch(pd.DataFrame({"text": ["a"]}), config, "f.csv")
    with pytest.raises(IngestError, match="no rows"):
        prepare_batch(pd.DataFrame({"text": [], "label": []}), config, "f.csv")


def test_split_is_deterministic_and_duplicates_share_a_split():
    config = KaizenConfig()
    frame = pd.DataFrame(
        {
            "text": ["Hello   World", "hello world", "HELLO WORLD "] + [f"row {i}" for i in range(2000)],
            "label": ["positive"] * 2003,
        }
    )
    batch = prepare_batch(frame, config, "f.csv")
    assert batch["split"].iloc[0] == batch["split"].iloc[1] == batch["split"].iloc[2]
    again = prepare_batch(frame, config, "f.csv")
    assert batch["split"].tolist() == again["split"].tolist()
    shares = batch["split"].value_counts(normalize=True)
    assert 0.75 < shares["train"] < 0.85 and 0.07 < shares["test"] < 0.13


def test_normalise_and_assign_split():
    assert normalise_text("  Caf\u00e9\tOLÉ  ") == "café olé"
    split = KaizenConfig().data.split
    assert assign_split("same text", split) == assign_split("same text", split)


def test_content_hash_sees_every_cell():
    a = pd.DataFrame({"text": ["x", "y"], "label": ["p", "n"]})
    b = a.assign(label=["p", "p"])
    assert content_hash(a) != content_hash(b)
    assert content_hash(a) == content_hash(a.copy())


@pytest.mark.parametrize("bad", ["", "../escape", "a/b", "x" * 101, "-lead"])
def test_batch_ids_are_safe_file_names(bad):
    with pytest.raises(IngestError):
        check_batch_id(bad)
