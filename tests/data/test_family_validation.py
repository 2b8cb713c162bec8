"""Each family's validation suite (Great Expectations, as for classification): malformed rows are
named by row and rule, all at once, and `kaizen validate` writes nothing."""

from __future__ import annotations

import pandas as pd
import pytest

from tasks.config import KaizenConfig
from tasks.demo_families import TAGS, ner_batch, NEWS
from tasks.ingest import IngestError, prepare_batch
from tasks.validate import validate_batch

NER = KaizenConfig(task="token-classification", labels=TAGS, validation={"min_rows": 5})
LM = KaizenConfig(task="causal-lm", validation={"min_rows": 5})


def _failures(frame: pd.DataFrame, config: KaizenConfig) -> dict[str, str]:
    report = validate_batch(prepare_batch(frame, config, "test.csv"), config)
    return {o.name: o.detail for o in report.failures}


def test_a_clean_ner_batch_passes_and_lists_become_strings():
    frame = ner_batch(NEWS, "news", 40, 1)
    as_lists = frame.assign(tokens=frame["tokens"].str.split(" "), tags=frame["tags"].str.split(" "))
    batch = prepare_batch(as_lists, NER, "test.jsonl")
    assert batch["tokens"].tolist() == frame["tokens"].tolist() and batch["tags"].tolist() == frame["tags"].tolist()
    assert set(batch["label"]) <= {"entity", "none"} and (batch["text"] == batch["tokens"]).all()
    assert validate_batch(batch, NER).success


def test_every_broken_ner_rule_names_its_rows():
    frame = ner_batch(NEWS, "news", 40, 2).drop(columns=["domain"])
    frame.loc[2, "tags"] = " ".join(frame.loc[2, "tags"].split()[:-1])  # one tag short
    frame.loc[5, "tags"] = "I-person " + " ".join(["O"] * (len(frame.loc[5, "tokens"].split()) - 1))
    frame.loc[7, "tags"] = frame.loc[7, "tags"].replace("O", "B-animal", 1)
    frame.loc[9, "tokens"] = frame.loc[9, "tokens"].replace(" ", "  ", 1)  # an empty token
    failures = _failures(frame, NER)
    assert "row 3:" in failures["as many tags as tokens"] and "tokens," in failures["as many tags as tokens"]
    assert "row 6:" in failures["BIO well-formed (an I-X continues an X)"]
    assert "'I-person' starts the sentence" in failures["BIO well-formed (an I-X continues an X)"]
    assert "row 8:" in failures["tags in declared label set"] and "B-animal" in failures["tags in declared label set"]
    assert "row 10:" in failures["no empty token"]


def test_a_missing_tags_column_is_refused_naming_it():
    with pytest.raises(IngestError, match="missing required column.*tags"):
        prepare_batch(pd.DataFrame({"tokens": ["a b"]}), NER, "f.csv")


def test_an_empty_lm_text_is_named_by_row():
    frame = pd.DataFrame({"text": [f"support reply number {i} about the router" for i in range(20)]})
    frame.loc[4, "text"] = "   "
    failures = _failures(frame, LM)
    assert list(failures) == ["text not empty after stripping"]
    assert "row 5:" in failures["text not empty after stripping"]


def test_kaizen_validate_on_a_malformed_ner_file_exits_1_and_writes_nothing(tmp_path):
    from tests.conftest import make_workspace, tree_snapshot
    from tests.flows.e2e import cli

    root = make_workspace(tmp_path / "ws", {"task": "token-classification", "labels": TAGS})
    frame = ner_batch(NEWS, "news", 60, 3).drop(columns=["domain"])
    frame.loc[0, "tags"] = "O"
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    before = tree_snapshot(root)
    run = cli(["validate", str(bad), "--workspace", str(root)])
    assert run.code == 1, run.why()
    assert "as many tags as tokens" in run.out + run.err and "row 1:" in run.out + run.err
    assert tree_snapshot(root) == before
