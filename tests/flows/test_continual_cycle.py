"""The whole cycle end to end: real Prefect (test harness), MLflow on SQLite, DVC with a local
remote, GX validation, and a tiny random 2-layer encoder.

The story runs once (the `e2e_cycle` session fixture, tests/flows/e2e.py); each test below checks
one behaviour against what the story recorded, so a failure names what broke without hiding the
rest. The story takes minutes, hence `slow` on every test that needs it."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.flows.e2e import BOOTSTRAP, CORRUPT, NOISED, ROLLBACK_REASON, SHIFTED
from tests.flows.e2e import registry as _registry

pytestmark = pytest.mark.usefixtures("prefect_harness")

REQUIRED_TAGS = (
    "kaizen.data_md5",
    "kaizen.batch_ids",
    "kaizen.git_sha",
    "kaizen.config_hash",
    "kaizen.flow_run_id",
    "kaizen.gate_verdict",
    "kaizen.dvc_remote",
)


@pytest.mark.slow
def test_bootstrap_promotes_first_model_with_lineage_tags(e2e_cycle):
    first, champion = e2e_cycle.bootstrap.summary, e2e_cycle.bootstrap.champion
    assert first["status"] == "promoted", first
    assert champion is not None, "no champion after the bootstrap"
    assert champion.version == first["version"] == "1"
    for tag in REQUIRED_TAGS:
        assert champion.tags.get(tag), f"champion lacks tag {tag}"
    assert champion.tags["kaizen.data_md5"] == e2e_cycle.bootstrap.data_version
    assert champion.tags["kaizen.batch_ids"] == BOOTSTRAP
    assert champion.tags["kaizen.config_hash"] == e2e_cycle.config.fingerprint()
    assert champion.tags["kaizen.flow_run_id"] == first["flow_run_id"]
    assert champion.tags["kaizen.gate_verdict"] == "pass"


@pytest.mark.slow
def test_bootstrap_pushes_data_to_the_remote(e2e_cycle):
    assert e2e_cycle.bootstrap.remote_has_md5, "dvc push left the remote empty"


@pytest.mark.slow
def test_shifted_batch_is_promoted(e2e_cycle):
    second, champion = e2e_cycle.promotion.summary, e2e_cycle.promotion.champion
    assert second["status"] == "promoted", second["reasons"]
    assert champion is not None and champion.version == "2"
    assert second["metrics"]["new.challenger.accuracy"] > second["metrics"]["new.champion.accuracy"]


@pytest.mark.slow
def test_promotion_is_judged_on_regression_golden_and_latency(e2e_cycle):
    metrics = e2e_cycle.promotion.summary["metrics"]
    assert "regression.challenger.accuracy" in metrics
    assert "golden.ci_low.accuracy" in metrics and "latency.challenger.p95_ms" in metrics


@pytest.mark.slow
def test_promoted_champion_records_parent_and_replay(e2e_cycle):
    v2 = e2e_cycle.promotion.champion
    assert v2.tags["kaizen.batch_ids"] == f"{BOOTSTRAP},{SHIFTED}"
    assert v2.tags["kaizen.parent_version"] == "1"
    assert int(v2.tags["kaizen.replayed_rows"]) > 0


@pytest.mark.slow
def test_corrupt_batch_is_rejected_by_validation(e2e_cycle):
    q = e2e_cycle.quarantine
    assert q.rejection is not None, f"{CORRUPT} did not raise BatchRejected; the cycle returned {q.summary}"
    assert "text not empty after stripping" in q.rejection and "label in declared label set" in q.rejection


@pytest.mark.slow
def test_corrupt_batch_is_quarantined_and_nothing_changes(e2e_cycle):
    q = e2e_cycle.quarantine
    assert "report.json" in q.quarantined, q.quarantined
    assert "batch.parquet" in q.quarantined, q.quarantined
    # Data version, data tree, DVC remote and registry all stay as they were.
    assert q.after == q.before
    assert q.champion_version == "2"


@pytest.mark.slow
def test_noised_batch_is_rejected_and_withdrawn(e2e_cycle):
    r = e2e_cycle.rejection
    noised = r.summary
    assert noised["status"] == "rejected", noised
    assert noised["verdict"] == "reject" and noised["reasons"]
    assert noised["withdrawn"] == [NOISED] and noised["pending"] == []
    assert r.champion_version == "2"
    assert r.challenger_version == noised["version"] == "3"
    # The rejected batch leaves the training history; the data version is the champion's again.
    assert "batch.parquet" in r.quarantined, r.quarantined
    assert r.data_version == e2e_cycle.promotion.champion.tags["kaizen.data_md5"]


@pytest.mark.slow
def test_rollback_restores_previous_champion_and_ledger_records_it(e2e_cycle):
    rb = e2e_cycle.rollback
    assert rb.cli.code == 0, rb.cli.why()
    assert rb.champion_version == "1"
    assert [(e.action, e.from_version, e.to_version) for e in rb.ledger] == [
        ("promote", None, "1"),
        ("promote", "1", "2"),
        ("rollback", "2", "1"),
    ]
    assert rb.ledger[-1].why == ROLLBACK_REASON and rb.ledger[-1].who == "pytest"


@pytest.mark.slow
def test_status_json(e2e_cycle):
    # Champion, challenger, data version and the last verdict, after the rollback.
    run = e2e_cycle.views.status
    assert run.code == 0, run.why()
    status = json.loads(run.out)
    assert status["champion"]["version"] == "1"
    assert status["challenger"]["version"] == "3"
    assert status["last_run"]["verdict"] == "reject"
    assert status["data_version"] == e2e_cycle.views.data_version


@pytest.mark.slow
def test_history_lists_moves(e2e_cycle):
    # Both moves around the rollback.
    run = e2e_cycle.views.history
    assert run.code == 0, run.why()
    history = run.out.strip().splitlines()
    assert len(history) == 3 and "promote" in history[1] and "v1 -> v2" in history[1]
    assert "rollback" in history[2] and "v2 -> v1" in history[2] and ROLLBACK_REASON in history[2]


@pytest.mark.slow
def test_report_draws_its_figures(e2e_cycle):
    run, out = e2e_cycle.views.report, e2e_cycle.views.report_dir
    assert run.code == 0, run.why()
    page = (out / "index.html").read_text()
    for picture in ("metrics.png", "timeline.png", "drift.png"):
        assert (out / picture).stat().st_size > 1000 and f"src='{picture}'" in page


@pytest.mark.slow
def test_report_holds_recorded_numbers(e2e_cycle):
    # A static dashboard: the numbers the cycles recorded, the rollback and the quarantine.
    run, out = e2e_cycle.views.report, e2e_cycle.views.report_dir
    assert run.code == 0, run.why()
    page = (out / "index.html").read_text()
    second, noised = e2e_cycle.promotion.summary, e2e_cycle.rejection.summary
    recorded = json.loads((out / "data.json").read_text())
    assert [v["version"] for v in recorded["versions"]] == ["1", "2", "3"]
    assert f"{second['metrics']['new.challenger.accuracy']:.4f}" in page
    assert f"{second['metrics']['regression.champion.accuracy']:.4f}" in page
    assert f"{noised['metrics']['new.challenger.accuracy']:.4f}" in page
    assert ROLLBACK_REASON in page and CORRUPT in page and "quarantined" in page
    v3_gate = next(v["gate"] for v in recorded["versions"] if v["version"] == "3")
    assert v3_gate["verdict"] == "reject" and v3_gate["reasons"] == noised["reasons"]


@pytest.mark.slow
def test_lineage_checkout_restores_exact_data(e2e_cycle):
    # `kaizen lineage 1 --checkout DIR` restores exactly the data v1 was trained on.
    run, restored = e2e_cycle.views.lineage, e2e_cycle.views.restored
    assert run.code == 0, run.why()
    record = json.loads(run.out.split("\nrestored")[0])
    assert record["data_md5"] == e2e_cycle.bootstrap.champion.tags["kaizen.data_md5"]
    assert record["batch_ids"] == [BOOTSTRAP]
    assert sorted(p.name for p in (restored / "data" / "batches").iterdir()) == [f"{BOOTSTRAP}.parquet"]
    assert json.loads((restored / "data" / "manifest.json").read_text())[0]["batch_id"] == BOOTSTRAP
    restored_batch = (restored / "data" / "batches" / f"{BOOTSTRAP}.parquet").read_bytes()
    assert hashlib.sha256(restored_batch).hexdigest() == e2e_cycle.views.original_sha256


@pytest.mark.slow
def test_quarantine_list_shows_both_kinds(e2e_cycle):
    run = e2e_cycle.resubmission.listed
    assert run.code == 0, run.why()
    listed = {e["batch_id"]: e for e in json.loads(run.out)}
    assert listed[CORRUPT]["kind"] == "validation" and "label in declared label set" in listed[CORRUPT]["reason"]
    assert listed[NOISED]["kind"] == "gate" and "new accuracy" in listed[NOISED]["reason"]


@pytest.mark.slow
def test_quarantine_resubmit_takes_a_fixed_batch_back(e2e_cycle):
    r = e2e_cycle.resubmission
    assert r.resubmit.code == 0, r.resubmit.why()
    assert f"{CORRUPT}-r1" in r.manifest_ids
    assert r.listed_after.code == 0, r.listed_after.why()
    assert [e["batch_id"] for e in json.loads(r.listed_after.out)] == [NOISED]


def test_nothing_to_do_when_no_new_batches(workspace):
    from flows.pipeline import continual_training

    summary = continual_training(workspace=str(workspace))
    assert summary["status"] == "nothing-to-do"
    assert summary["version"] is None


@pytest.mark.slow  # two full cycles on SST-2 rows: 9-79 s measured on 2 shared cores
def test_backtest_replays_history_in_its_own_workspace(workspace, tmp_path, capsys):
    from flows.cli import main
    from tests.conftest import SHARED

    target = tmp_path / "bt"
    capsys.readouterr()
    code = main(
        [
            "backtest",
            "--source",
            str(SHARED / "sst2" / "validation.csv"),
            "--batches",
            "2",
            "--rows",
            "150",
            "--into",
            str(target),
            "--json",
            "--workspace",
            str(workspace),
        ]
    )
    assert code == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["cycle"] for r in records] == [1, 2]
    assert [r["batch"] for r in records] == ["validation-001", "validation-002"]
    for r in records:
        assert r["outcome"] in {"promoted", "rejected"}
        assert r["new_accuracy"] is not None and 0 <= r["new_accuracy"] <= 1
        assert r["promoted"] == (r["outcome"] == "promoted")
        assert r["promoted"] or r["reasons"]
    assert records[0]["regression_accuracy"] is None  # nothing earlier to forget on the first cycle
    # 120 training rows of SST-2 are too few for the tiny encoder: the bootstrap is rejected, and
    # since more data may fix that, its batch stays pending and joins the second cycle.
    assert records[0]["outcome"] == "rejected" and records[0]["data"] == "pending"
    from tasks.config import load_config
    from tasks.registry import connect, get_version
    from tasks.workspace import Workspace

    bt = Workspace.at(target)
    config = load_config(bt.root)
    second = get_version(connect(bt, config), config.registry.model_name, records[1]["version"])
    assert second.tags["kaizen.new_batches"] == "validation-001,validation-002"
    import pandas as pd

    first = pd.read_csv(target / ".kaizen" / "backtest-input" / "validation-001.csv")
    assert set(first["label"]) == {"negative", "positive"}  # named from label_names.txt
    assert not (workspace / "data" / "manifest.json").exists()  # the home workspace is untouched


def test_lora_challenger_is_registered_and_served_by_predict(tmp_path, demo_files, capsys):
    from flows.cli import main
    from flows.pipeline import continual_training
    from tests.conftest import TINY_CONFIG, make_workspace

    settings = {**TINY_CONFIG, "train": {**TINY_CONFIG["train"], "lora": {"enabled": True, "r": 4, "alpha": 8}}}
    root = make_workspace(tmp_path / "lora-ws", settings)
    summary = continual_training(
        files=[str(demo_files["demo-1-restaurants"])], batch_ids=["lora-1"], workspace=str(root)
    )
    assert summary["version"] == "1"
    ws, config, client, name = _registry(root)
    from tasks.registry import download_model, get_version

    model_dir = download_model(client, get_version(client, name, "1"), tmp_path / "dl")
    from safetensors.torch import load_file

    assert not any("lora" in k for k in load_file(str(model_dir / "model.safetensors")))
    capsys.readouterr()
    texts = ["The soup was delicious and the staff made our evening.", "The pasta tasted stale."]
    assert main(["predict", "--version", "1", "--workspace", str(root), *texts]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    for line, text in zip(lines, texts, strict=True):
        label, score, echoed = line.split("\t")
        assert label in config.labels and 0.5 <= float(score) <= 1.0 and echoed == text


@pytest.mark.slow
def test_report_renders_in_a_headless_browser_without_console_errors(e2e_cycle, tmp_path):
    # What a data team opens: Debian's chromium renders it; the champion, who served when and
    # the gate decisions are on the rendered page, and the browser logs no console error.
    import shutil
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")
    out = e2e_cycle.views.report_dir
    rendered = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            (out / "index.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rendered.returncode == 0, rendered.stderr[-3000:]
    dom = rendered.stdout
    assert "Champion: <b>v1</b>" in dom
    assert "Which version served when" in dom and "rollback" in dom and "<td>now</td>" in dom
    assert "v3: reject" in dom and "v2: pass" in dom
    # Chromium logs console.error and uncaught exceptions alike as `INFO:CONSOLE`; the page has
    # no script, so any console line at all is a fault.
    console = [line for line in rendered.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
