"""The evidence policy: power made visible, proper scoring, multiplicity, accumulation."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from tasks.config import GateConfig
from tasks.dataset import Examples
from tasks.evaluate import Evaluation, SetEvaluation, evaluate_predictions, pool_evaluations
from tasks.gate import (
    GateDecision,
    GatePolicy,
    Rule,
    adjust_pvalues,
    decide,
    decide_accumulated,
    harm_pvalue,
    implicates_data,
    paired_stat,
    policy_from_config,
)
from tests.code.gate_common import LABELS, LATENCY, POLICY

EVIDENCE = GatePolicy()


def _proba(pred: np.ndarray, confidence: float = 0.9) -> np.ndarray:
    out = np.full((len(pred), 2), 1 - confidence)
    out[np.arange(len(pred)), pred] = confidence
    return out


def _flip(y: np.ndarray, rows) -> np.ndarray:
    out = y.copy()
    out[rows] = 1 - out[rows]
    return out


def _evaluate(name, y, chal, champ, kind="set", chal_proba=None, champ_proba=None) -> SetEvaluation:
    examples = Examples([np.array([1, 2])] * len(y), y, pd.DataFrame(index=range(len(y))))
    return evaluate_predictions(
        name,
        examples,
        _proba(chal) if chal_proba is None else chal_proba,
        _proba(champ) if champ_proba is None else champ_proba,
        LABELS,
        300,
        0,
        kind,
    )


def _cycle(seed: int, rows: int = 100, regression: SetEvaluation | None = None) -> Evaluation:
    """A fresh `new` split where the challenger wins 11 rows and loses 4 of every 100."""
    y = np.random.default_rng(seed).integers(0, 2, rows)
    wins, both, losses = np.arange(0, 11), np.arange(11, 15), np.arange(15, 19)
    new = _evaluate("new", y, _flip(y, np.r_[both, losses]), _flip(y, np.r_[wins, both]))
    return Evaluation([new, regression or _identical("regression", 300)], LABELS, LATENCY)


def _identical(name: str, rows: int, seed: int = 9) -> SetEvaluation:
    y = np.random.default_rng(seed).integers(0, 2, rows)
    pred = _flip(y, np.arange(rows // 10))
    return _evaluate(name, y, pred, pred)


def _rule(decision: GateDecision, prefix: str) -> Rule:
    return next(r for r in decision.rules if r.name.startswith(prefix))


def test_knobs_come_from_config_with_defaults():
    assert policy_from_config(GateConfig()) == GatePolicy()
    future = SimpleNamespace(policy="legacy", alpha=0.1, correction="bh", underpowered="reject", scoring="brier")
    knobs = policy_from_config(future)
    assert (knobs.name, knobs.alpha, knobs.correction, knobs.underpowered, knobs.scoring) == (
        "legacy",
        0.1,
        "bh",
        "reject",
        "brier",
    )
    assert knobs.max_hold_rows == GatePolicy().max_hold_rows
    with pytest.raises(ValueError, match="gate.policy"):
        GatePolicy(name="lenient")
    with pytest.raises(ValueError, match="gate.correction"):
        GatePolicy(correction="bonferroni")


def test_adjusted_pvalues_known_values():
    p = [0.01, 0.04, 0.03, 0.005]
    assert adjust_pvalues(p, "holm") == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert adjust_pvalues(p, "bh") == pytest.approx([0.02, 0.04, 0.04, 0.02])


def test_a_gain_the_set_cannot_resolve_is_underpowered_and_holds():
    decision = decide(_cycle(1), POLICY, True, EVIDENCE)
    assert decision.verdict == "hold" and not decision.passed and decision.held
    rule = _rule(decision, "new log_loss gain")
    assert rule.outcome == "underpowered" and not rule.passed
    assert rule.point == pytest.approx(0.07, abs=1e-6)  # 0.9/0.1 confidences: log-loss gain = accuracy gain
    assert rule.resolvable > POLICY.noninferiority_margin and 0 < rule.half_width < rule.resolvable
    assert "rows to resolve 0.02 (has 100)" in rule.note
    assert [r.split(" = ")[0] for r in decision.reasons] == [rule.name]
    assert not implicates_data(decision)  # underpowered never blames the data
    assert _rule(decision, "regression accuracy gain").outcome == "pass"
    # The configured rule decides what "cannot tell yet" means.
    assert decide(_cycle(1), POLICY, True, GatePolicy(underpowered="reject")).verdict == "reject"
    assert decide(_cycle(1), POLICY, True, GatePolicy(underpowered="promote")).verdict == "pass"
    assert decide(_cycle(1), POLICY, True, GatePolicy(name="no-harm")).verdict == "pass"


def test_power_is_visible_in_json_and_markdown():
    decision = decide(_cycle(1), POLICY, True, EVIDENCE)
    raw = json.loads(decision.to_json())
    assert raw["verdict"] == "hold" and raw["held"] is True and raw["policy"] == "evidence"
    judged = [r for r in raw["rules"] if "gain" in r["name"]]
    assert {r["outcome"] for r in judged} == {"underpowered", "pass"}
    assert all(r["half_width"] is not None and r["resolvable"] is not None for r in judged)
    assert GateDecision.from_json(decision.to_json()) == decision
    markdown = decision.to_markdown()
    assert "**Gate: hold** (challenge; policy evidence)" in markdown
    assert "| rule | value | threshold | outcome | ± half-width | resolvable | note |" in markdown
    assert "| UNDERPOWERED |" in markdown


def test_pooling_fresh_splits_turns_a_hold_into_a_decision():
    regression = _identical("regression", 300)
    looks = [_cycle(seed, regression=regression) for seed in (1, 2, 3)]
    assert [decide(look, POLICY, True, EVIDENCE).verdict for look in looks] == ["hold"] * 3
    pooled = pool_evaluations(looks[:2])
    new = pooled.get("new")
    assert (new.rows, new.looks, len(new.paired["correct_diff"])) == (200, 2, 200)
    assert new.challenger["accuracy"] == pytest.approx(0.92) and new.delta["accuracy"] == pytest.approx(0.07)
    # The regression rows are the same rows evaluated again: counted once, not pooled.
    assert pooled.get("regression") is regression and pooled.get("regression").looks == 1
    # Two looks are not yet enough at the stricter second-look level; three are.
    assert decide_accumulated(looks[:2], POLICY, EVIDENCE).verdict == "hold"
    decision = decide_accumulated(looks, POLICY, EVIDENCE)
    assert decision.verdict == "pass", decision.reasons
    assert _rule(decision, "new log_loss gain").outcome == "pass"


def test_accumulated_looks_spend_the_error_budget():
    """The same pooled gain is judged more strictly at a later look (alpha/2, then alpha/6), and
    `new`'s budget is split between its two tests (log-loss, accuracy): alpha/4, then alpha/12."""
    first = _cycle(1)
    one_look = paired_stat(first.get("new"), "log_loss")
    decision = decide(first, POLICY, True, EVIDENCE)
    assert _rule(decision, "new log_loss gain").half_width == pytest.approx(2.24140 * one_look.se, rel=1e-4)
    pooled = pool_evaluations([first, _cycle(2)])
    two_looks = paired_stat(pooled.get("new"), "log_loss")
    half = _rule(decide(pooled, POLICY, True, EVIDENCE), "new log_loss gain").half_width
    assert half == pytest.approx(2.63826 * two_looks.se, rel=1e-4)


def test_hold_limit_turns_a_hold_into_a_reject():
    decision = decide(_cycle(1), POLICY, True, GatePolicy(max_hold_rows=100))
    assert decision.verdict == "reject" and not decision.held
    assert decision.rules[-1].name == "pooled rows in new while held" and decision.rules[-1].outcome == "fail"
    assert not implicates_data(decision)


def _slices(dips: dict[int, int], wins: int = 4, rows: int = 100) -> Evaluation:
    """A clearly better `new`, and a regression set of 10 domains of `rows` rows: the
    challenger loses dips[k] rows of domain k and wins `wins` rows of every other domain."""
    rng = np.random.default_rng(5)
    y_new = rng.integers(0, 2, 300)
    new = _evaluate("new", y_new, _flip(y_new, np.arange(15)), _flip(y_new, np.arange(90)))
    y = rng.integers(0, 2, 10 * rows)
    chal, champ = y.copy(), y.copy()
    for k in range(10):
        start = k * rows
        if k in dips:
            chal[start : start + dips[k]] = 1 - y[start : start + dips[k]]
        else:
            champ[start : start + wins] = 1 - y[start : start + wins]
    sets = [new, _evaluate("regression", y, chal, champ)]
    sets += [
        _evaluate(
            f"regression/domain={k}",
            y[k * rows : (k + 1) * rows],
            chal[k * rows : (k + 1) * rows],
            champ[k * rows : (k + 1) * rows],
            "slice",
        )
        for k in range(10)
    ]
    return Evaluation(sets, LABELS, LATENCY)


def test_holm_keeps_modest_slice_dips_from_blocking_bh_does_not():
    evaluation = _slices({0: 9, 1: 9, 2: 9})
    dipped = [
        paired_stat(evaluation.get(f"regression/domain={k}"), "log_loss", evaluation.get("regression"))
        for k in range(3)
    ]
    raw = [harm_pvalue(stat, POLICY.noninferiority_margin) for stat in dipped]
    assert all(0.005 < p < 0.01 for p in raw)  # each would block if judged alone at 5%
    holm = decide(evaluation, POLICY, True, EVIDENCE)
    assert holm.verdict == "pass", holm.reasons
    slices = [r for r in holm.rules if r.name.startswith("regression/domain=")]
    assert len(slices) == 10 and all(r.passed and r.outcome != "fail" for r in slices)
    assert {r.outcome for r in slices[:3]} == {"underpowered"}  # reported, advisory: slices screen for harm
    # Three modest dips together are a discovery under a false-discovery-rate correction.
    bh = decide(evaluation, POLICY, True, GatePolicy(correction="bh"))
    assert bh.verdict == "reject"
    assert [r.name.split(" ")[0] for r in bh.rules if r.outcome == "fail"] == [
        f"regression/domain={k}" for k in range(3)
    ]
    # The legacy rules demand every slice prove itself: all three block.
    legacy = decide(evaluation, POLICY, True, GatePolicy(name="legacy"))
    assert not legacy.passed and len(legacy.reasons) == 3


def test_a_real_harm_on_one_slice_still_blocks():
    decision = decide(_slices({4: 30}, wins=3), POLICY, True, EVIDENCE)
    assert decision.verdict == "reject"
    failed = [r for r in decision.rules if r.outcome == "fail"]
    assert [r.name.split(" ")[0] for r in failed] == ["regression/domain=4"]
    assert failed[0].value < -POLICY.noninferiority_margin and implicates_data(decision)


def test_log_loss_decides_where_accuracy_is_underpowered():
    rng = np.random.default_rng(3)
    rows = 200
    y = rng.integers(0, 2, rows)
    champ = _flip(y, np.arange(30))
    chal = _flip(y, np.arange(3, 30))  # 3 more rows right: +1.5 points, within the noise
    # Both models as confident as each other's correctness warrants, the challenger a little
    # surer of the right label on every row: what a better model looks like to a proper score.
    sure = rng.uniform(0.6, 0.95, rows)
    champ_p = np.where(champ == y, sure, 1 - sure)
    chal_p = np.clip(np.where(chal == y, sure + 0.04, 1 - sure + 0.04), 0.01, 0.99)
    new = _evaluate(
        "new", y, chal, champ, chal_proba=_true_label_proba(y, chal_p), champ_proba=_true_label_proba(y, champ_p)
    )
    evaluation = Evaluation([new, _identical("regression", 300)], LABELS, LATENCY)
    accuracy = decide(evaluation, POLICY, True, GatePolicy(scoring="accuracy"))
    assert accuracy.verdict == "hold" and _rule(accuracy, "new accuracy gain").outcome == "underpowered"
    log_loss = decide(evaluation, POLICY, True, EVIDENCE)
    assert log_loss.verdict == "pass", log_loss.reasons
    assert decide(evaluation, POLICY, True, GatePolicy(scoring="brier")).verdict == "pass"


def _true_label_proba(y: np.ndarray, p_true: np.ndarray) -> np.ndarray:
    p_one = np.where(y == 1, p_true, 1 - p_true)
    return np.stack([1 - p_one, p_one], axis=1)


def test_missing_or_nan_evidence_fails_closed():
    cycle = _cycle(1)
    new = cycle.get("new")
    no_paired = SetEvaluation("new", "set", new.rows, new.challenger, new.champion, new.delta, new.ci_low, new.ci_high)
    decision = decide(Evaluation([no_paired, cycle.get("regression")], LABELS, LATENCY), POLICY, True, EVIDENCE)
    rule = _rule(decision, "new log_loss gain")
    assert decision.verdict == "reject" and rule.outcome == "fail" and rule.value is None
    broken = {**new.paired, "log_loss_gain": [math.nan] + new.paired["log_loss_gain"][1:]}
    nan_set = SetEvaluation("new", "set", new.rows, new.challenger, new.champion, paired=broken)
    decision = decide(Evaluation([nan_set, cycle.get("regression")], LABELS, LATENCY), POLICY, True, EVIDENCE)
    assert decision.verdict == "reject" and _rule(decision, "new log_loss gain").outcome == "fail"
    no_regression = decide(Evaluation([new], LABELS, LATENCY), POLICY, True, EVIDENCE)
    assert no_regression.verdict == "reject" and _rule(no_regression, "regression accuracy gain").value is None
    assert not implicates_data(no_regression)


def test_without_errors_to_scale_by_the_score_falls_back_to_accuracy():
    perfect = _identical("regression", 300)
    perfect = SetEvaluation(
        perfect.name,
        "set",
        perfect.rows,
        {**perfect.challenger, "log_loss_gap": math.nan},
        {**perfect.champion, "log_loss_gap": math.nan},
        paired=perfect.paired,
    )
    stat = paired_stat(perfect, "log_loss")
    assert stat.scoring == "accuracy" and stat.scale == 1.0 and stat.point == 0.0


def _clear_gain_cycle(regression: SetEvaluation) -> Evaluation:
    """`new` with a gain any test resolves (the challenger fixes 40 of 400 rows, breaks none)."""
    y = np.random.default_rng(3).integers(0, 2, 400)
    new = _evaluate("new", y, y, _flip(y, np.arange(40)))
    return Evaluation([new, regression], LABELS, LATENCY)


def _regression_with(rows: int, challenger_flips, champion_flips, seed: int = 4) -> SetEvaluation:
    y = np.random.default_rng(seed).integers(0, 2, rows)
    return _evaluate("regression", y, _flip(y, challenger_flips), _flip(y, champion_flips))


def test_an_underpowered_fixed_set_screens_for_harm_instead_of_holding_forever():
    """Regression is the same rows every cycle: waiting never resolves its margin, so by default
    it only blocks on evidence of harm (seen in a replay: a 179-row regression set held a better
    challenger for every later cycle)."""
    small = _regression_with(60, np.arange(6, 12), np.arange(0, 9))  # noisy: +3 rows of 60
    screened = decide(_clear_gain_cycle(small), POLICY, True, EVIDENCE)
    rule = _rule(screened, "regression accuracy gain")
    assert rule.outcome == "underpowered" and rule.passed  # reported, advisory
    assert screened.verdict == "pass"
    holding = decide(_clear_gain_cycle(small), POLICY, True, GatePolicy(underpowered_fixed="hold"))
    assert holding.verdict == "hold" and not _rule(holding, "regression accuracy gain").passed


def test_harm_on_an_underpowered_fixed_set_still_blocks():
    harmed = _regression_with(200, np.arange(0, 60), np.arange(0, 2))  # 29 points worse
    decision = decide(_clear_gain_cycle(harmed), POLICY, True, EVIDENCE)
    rule = _rule(decision, "regression accuracy gain")
    assert rule.outcome == "fail" and decision.verdict == "reject"


def _sure_but_wrong_champion(rows: int, wrong: int, seed: int) -> SetEvaluation:
    """The champion is near-certain on its right rows and errs on `wrong` rows; the challenger
    gets every row right but only just (p=0.55): more accurate, far worse in log-loss."""
    y = np.random.default_rng(seed).integers(0, 2, rows)
    champ = _flip(y, np.arange(wrong))
    champ_p = np.where(champ == y, 0.999, 0.3)
    name = "new" if seed == 1 else "regression"
    return _evaluate(
        name,
        y,
        y,
        champ,
        chal_proba=_true_label_proba(y, np.full(rows, 0.55)),
        champ_proba=_true_label_proba(y, champ_p),
    )


def test_more_accurate_but_worse_calibrated_is_no_harm_and_can_show_its_gain():
    """Replayed on SST-2: a challenger +10 accuracy points on `new` and +3 on regression but worse
    in log-loss was rejected, and its batch withdrawn, when harm was read on log-loss."""
    evaluation = Evaluation(
        [_sure_but_wrong_champion(400, 40, 1), _sure_but_wrong_champion(200, 6, 2)], LABELS, LATENCY
    )
    assert evaluation.get("regression").delta["log_loss"] > 0  # the challenger's log-loss is worse
    lenient_ece = POLICY.model_copy(update={"max_ece": 1.0})  # calibration is its own rule
    decision = decide(evaluation, lenient_ece, True, EVIDENCE)
    assert decision.verdict == "pass", decision.reasons
    assert _rule(decision, "regression accuracy gain").outcome in {"pass", "underpowered"}
    assert not implicates_data(decision)
    # Calibration still has its say through max_ece, and it does not blame the data.
    strict = decide(evaluation, POLICY, True, EVIDENCE)
    assert strict.verdict == "reject" and [r.kind for r in strict.rules if not r.passed] == ["calibration"]
    assert not implicates_data(strict)
