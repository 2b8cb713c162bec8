import math

from tasks.config import GateConfig
from tasks.evaluate import Evaluation, SetEvaluation
from tasks.gate import decide


def _set(name, rows, chal, champ=None, delta=None):
    return SetEvaluation(name, rows, chal, champ, delta or {}, {}, {})


POLICY = GateConfig(min_accuracy_new=0.7, min_macro_f1_new=0.6, max_regression_drop=0.02, max_new_drop=0.0, min_eval_rows=10)


def test_bootstrap_rule_for_first_model():
    ok = Evaluation([_set("new", 50, {"accuracy": 0.8, "macro_f1": 0.8})])
    assert decide(ok, POLICY, has_champion=False).passed
    low = Evaluation([_set("new", 50, {"accuracy": 0.5, "macro_f1": 0.5})])
    decision = decide(low, POLICY, has_champion=False)
    assert not decision.passed and decision.mode == "bootstrap"
    assert "new accuracy (bootstrap)" in decision.reasons[0]


def test_every_failure_is_listed():
    evaluation = Evaluation([
        _set("new", 5, {"accuracy": 0.6, "macro_f1": 0.5}, {"accuracy": 0.7, "macro_f1": 0.6}, {"accuracy": -0.1}),
        _set("regression", 50, {"accuracy": 0.8}, {"accuracy": 0.9}, {"accuracy": -0.1}),
    ])
    decision = decide(evaluation, POLICY, has_champion=True)
    assert not decision.passed
    names = [r.split(" = ")[0] for r in decision.reasons]
    assert names == ["rows in new test split", "new accuracy", "new macro_f1",
                     "new accuracy delta vs champion", "regression accuracy delta vs champion"]


def test_nan_or_missing_metric_fails_closed():
    nan = Evaluation([
        _set("new", 50, {"accuracy": math.nan, "macro_f1": 0.9}, {"accuracy": 0.5}, {"accuracy": 0.1}),
        _set("regression", 50, {"accuracy": 0.9}, {"accuracy": 0.9}, {"accuracy": 0.0}),
    ])
    decision = decide(nan, POLICY, has_champion=True)
    assert not decision.passed
    assert any("new accuracy = missing" in r for r in decision.reasons)
    no_regression_set = Evaluation([_set("new", 50, {"accuracy": 0.9, "macro_f1": 0.9}, {"accuracy": 0.5}, {"accuracy": 0.4})])
    assert not decide(no_regression_set, POLICY, has_champion=True).passed


def test_passing_challenge_and_report_formats():
    evaluation = Evaluation([
        _set("new", 50, {"accuracy": 0.9, "macro_f1": 0.9}, {"accuracy": 0.6}, {"accuracy": 0.3}),
        _set("regression", 50, {"accuracy": 0.89}, {"accuracy": 0.9}, {"accuracy": -0.01}),
    ])
    decision = decide(evaluation, POLICY, has_champion=True)
    assert decision.passed and decision.verdict == "pass" and decision.reasons == []
    assert "| regression accuracy delta vs champion | -0.0100 | >= -0.02 | pass |" in decision.to_markdown()
    assert '"verdict": "pass"' in decision.to_json()
