import math

import numpy as np
import pytest

from tasks.dataset import Examples
from tasks.evaluate import Evaluation, SetEvaluation, evaluate_predictions
from tasks.gate import GatePolicy, decide
from tests.code.gate_common import LABELS, LATENCY, POLICY

# The rules these tests were written for; tests/code/test_gate_policy.py covers the default.
LEGACY = GatePolicy(name="legacy")


def _proba(pred: np.ndarray, confidence: float = 0.9) -> np.ndarray:
    out = np.full((len(pred), 2), 1 - confidence)
    out[np.arange(len(pred)), pred] = confidence
    return out


def _examples(y: np.ndarray) -> Examples:
    import pandas as pd

    return Examples([np.array([1, 2])] * len(y), y, pd.DataFrame(index=range(len(y))))


def _flip(y: np.ndarray, rows: np.ndarray) -> np.ndarray:
    out = y.copy()
    out[rows] = 1 - out[rows]
    return out


def _evaluate(name, y, chal, champ, kind="set"):
    return evaluate_predictions(name, _examples(y), _proba(chal), _proba(champ), LABELS, 1000, 0, kind)


def _set(name, rows, chal, champ=None, delta=None, low=None):
    return SetEvaluation(name, "set", rows, chal, champ, delta or {}, low or {}, {})


def test_bootstrap_rule_for_first_model():
    ok = Evaluation([_set("new", 50, {"accuracy": 0.8, "macro_f1": 0.8, "ece": 0.05})])
    assert decide(ok, POLICY, has_champion=False).passed
    low = Evaluation([_set("new", 50, {"accuracy": 0.5, "macro_f1": 0.5, "ece": 0.05})])
    decision = decide(low, POLICY, has_champion=False)
    assert not decision.passed and decision.mode == "bootstrap"
    assert "new accuracy (bootstrap)" in decision.reasons[0]


@pytest.mark.parametrize("name", ["legacy", "evidence", "no-harm"])
def test_clear_improvement_without_regression_passes(name):
    rng = np.random.default_rng(0)
    y_new, y_old = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    new = _evaluate("new", y_new, _flip(y_new, np.arange(15)), _flip(y_new, np.arange(90)))
    old = _evaluate("regression", y_old, _flip(y_old, np.arange(10)), _flip(y_old, np.arange(10)))
    decision = decide(Evaluation([new, old], LABELS, LATENCY), POLICY, True, GatePolicy(name=name))
    assert decision.passed, decision.reasons


def test_better_by_less_than_the_noise_is_not_promoted():
    rng = np.random.default_rng(1)
    y_new, y_old = rng.integers(0, 2, 200), rng.integers(0, 2, 300)
    # Challenger gets 2 more rows right out of 200: +1 point, well inside the noise.
    new = _evaluate("new", y_new, _flip(y_new, np.arange(20)), _flip(y_new, np.arange(10, 32)))
    old = _evaluate("regression", y_old, y_old, y_old)
    assert new.delta["accuracy"] > 0 and new.ci_low["accuracy"] < 0
    decision = decide(Evaluation([new, old], LABELS, LATENCY), POLICY, True, LEGACY)
    assert not decision.passed
    assert [r.split(" = ")[0] for r in decision.reasons] == ["new accuracy delta CI low (improvement)"]


def test_worse_on_one_slice_only_is_rejected_naming_the_slice():
    rng = np.random.default_rng(2)
    y_new, y_old = rng.integers(0, 2, 300), rng.integers(0, 2, 600)
    new = _evaluate("new", y_new, y_new, _flip(y_new, np.arange(60)))
    # Overall regression is within the margin's reach on the whole set...
    slice_rows = np.arange(60)  # ...but the challenger forgot 18 of the 60 rows of one domain.
    old_chal, old_champ = _flip(y_old, slice_rows[:18]), y_old
    old = _evaluate("regression", y_old, old_chal, old_champ)
    bad_slice = _evaluate(
        "regression/domain=legal", y_old[slice_rows], old_chal[slice_rows], old_champ[slice_rows], "slice"
    )
    good_slice = _evaluate("regression/domain=news", y_old[60:], old_chal[60:], old_champ[60:], "slice")
    tiny_slice = _evaluate("regression/domain=rare", y_old[:5], _flip(y_old[:5], np.arange(5)), y_old[:5], "slice")
    policy = POLICY.model_copy(update={"noninferiority_margin": 0.05})
    decision = decide(Evaluation([new, old, bad_slice, good_slice, tiny_slice], LABELS, LATENCY), policy, True, LEGACY)
    assert not decision.passed
    assert len(decision.reasons) == 1 and decision.reasons[0].startswith(
        "regression/domain=legal accuracy delta CI low"
    )
    rare = next(r for r in decision.rules if r.name.startswith("regression/domain=rare"))
    assert rare.op == "n/a" and "5 rows < min_slice_rows" in rare.note


def test_every_failure_is_listed():
    evaluation = Evaluation(
        [
            _set(
                "new",
                5,
                {"accuracy": 0.6, "macro_f1": 0.5, "ece": 0.5},
                {"accuracy": 0.7},
                {"accuracy": -0.1},
                {"accuracy": -0.2},
            ),
            _set("regression", 50, {"accuracy": 0.8}, {"accuracy": 0.9}, {"accuracy": -0.1}, {"accuracy": -0.2}),
        ],
        LABELS,
        {"challenger": {"p50": 5.0, "p95": 9.0}, "champion": {"p50": 1.0, "p95": 1.0}},
    )
    decision = decide(evaluation, POLICY, True, LEGACY)
    names = [r.split(" = ")[0] for r in decision.reasons]
    assert names == [
        "rows in new test split",
        "new accuracy",
        "new macro_f1",
        "new accuracy delta CI low (improvement)",
        "regression accuracy delta CI low (non-inferiority)",
        "new ece",
        "latency p95 ratio vs champion",
    ]


@pytest.mark.parametrize("name", ["legacy", "evidence", "no-harm"])
def test_nan_or_missing_metric_fails_closed(name):
    knobs = GatePolicy(name=name)
    nan = Evaluation(
        [
            _set(
                "new",
                50,
                {"accuracy": math.nan, "macro_f1": 0.9, "ece": 0.1},
                {"accuracy": 0.5},
                {"accuracy": 0.1},
                {"accuracy": 0.05},
            ),
            _set("regression", 50, {"accuracy": 0.9}, {"accuracy": 0.9}, {"accuracy": 0.0}, {"accuracy": 0.0}),
        ],
        LABELS,
        LATENCY,
    )
    decision = decide(nan, POLICY, True, knobs)
    assert not decision.passed and decision.verdict == "reject"
    assert any(r.startswith("new accuracy = missing") for r in decision.reasons)
    no_regression = Evaluation([nan.sets[0]], LABELS, LATENCY)
    assert any("regression" in r for r in decide(no_regression, POLICY, True, knobs).reasons)
    no_latency = Evaluation(nan.sets, LABELS, {})
    assert any(
        r.startswith("latency p95 ratio vs champion = missing") for r in decide(no_latency, POLICY, True, knobs).reasons
    )


def test_report_formats_round_trip():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 100)
    new = _evaluate("new", y, y, _flip(y, np.arange(40)))
    old = _evaluate("regression", y, y, y)
    decision = decide(Evaluation([new, old], LABELS, LATENCY), POLICY, True, LEGACY)
    assert decision.passed and decision.verdict == "pass" and decision.reasons == []
    assert "| regression accuracy delta CI low (non-inferiority) | 0.0000 | >= -0.02 | pass |" in decision.to_markdown()
    from tasks.gate import GateDecision

    assert GateDecision.from_json(decision.to_json()) == decision


def test_which_failures_implicate_the_data():
    from tasks.gate import implicates_data

    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 300)
    old = _evaluate("regression", y, y, y)
    noisy_new = _evaluate("new", y, _flip(y, np.arange(120)), _flip(y, np.arange(120)))  # 60%: floor fails
    assert implicates_data(decide(Evaluation([noisy_new, old], LABELS, LATENCY), POLICY, True, LEGACY))
    no_gain = _evaluate("new", y, _flip(y, np.arange(20)), _flip(y, np.arange(20)))  # 93%, no gain
    decision = decide(Evaluation([no_gain, old], LABELS, LATENCY), POLICY, True, LEGACY)
    assert not decision.passed and not implicates_data(decision)
    forgot = _evaluate("regression", y, _flip(y, np.arange(60)), y)
    good_new = _evaluate("new", y, y, _flip(y, np.arange(60)))
    assert implicates_data(decide(Evaluation([good_new, forgot], LABELS, LATENCY), POLICY, True, LEGACY))
    # A wide interval around a gain is "not enough evidence", not forgetting.
    small = y[:60]
    uncertain = _evaluate("regression", small, _flip(small, np.arange(3, 8)), _flip(small, np.arange(0, 6)))
    decision = decide(Evaluation([good_new, uncertain], LABELS, LATENCY), POLICY, True, LEGACY)
    assert not decision.passed and uncertain.delta["accuracy"] > 0
    assert not implicates_data(decision)
    weak_first = Evaluation([_set("new", 50, {"accuracy": 0.5, "macro_f1": 0.5, "ece": 0.05})])
    assert not implicates_data(decide(weak_first, POLICY, has_champion=False))  # more data may fix a bootstrap
