"""Turn an evaluation into a promotion decision, listing every rule with its outcome.

Every rule is checked before deciding (a reader sees all failures at once), and the gate
fails closed: a missing or NaN metric fails its rule. Comparisons with the champion are
judged on the paired bootstrap interval, not on point values: non-inferiority needs the
interval's lower bound above -margin, improvement needs it above the required gain.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace

from tasks.config import GateConfig
from tasks.evaluate import Evaluation, SetEvaluation


@dataclass(frozen=True)
class Rule:
    name: str
    value: float | None
    threshold: float
    op: str  # ">=", "<=", ">" or "n/a" (reported, not judged)
    passed: bool
    note: str = ""
    kind: str = ""  # size | floor | improvement | non-inferiority | calibration | latency
    point: float | None = None  # the point delta behind a CI-based rule


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    mode: str  # "bootstrap" (no champion) or "challenge"
    rules: list[Rule]

    @property
    def verdict(self) -> str:
        return "pass" if self.passed else "reject"

    @property
    def reasons(self) -> list[str]:
        return [describe(r) for r in self.rules if not r.passed]

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "verdict": self.verdict, "reasons": self.reasons}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "GateDecision":
        raw = json.loads(text)
        return cls(raw["passed"], raw["mode"], [Rule(**r) for r in raw["rules"]])

    def to_markdown(self) -> str:
        lines = [f"**Gate: {self.verdict}** ({self.mode})", "", "| rule | value | threshold | outcome |",
                 "|---|---|---|---|"]
        for r in self.rules:
            outcome = "not judged" if r.op == "n/a" else ("pass" if r.passed else "FAIL")
            threshold = r.note if r.op == "n/a" else f"{r.op} {r.threshold:g}"
            lines.append(f"| {r.name} | {_fmt(r.value)} | {threshold} | {outcome} |")
        return "\n".join(lines)


def _bad(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _fmt(value: float | None) -> str:
    return "missing" if _bad(value) else f"{value:.4f}"


def describe(rule: Rule) -> str:
    text = f"{rule.name} = {_fmt(rule.value)}, needs {rule.op} {rule.threshold:g}"
    return f"{text} ({rule.note})" if rule.note else text


def check(name: str, value: float | None, threshold: float, op: str = ">=", note: str = "", kind: str = "") -> Rule:
    if _bad(value):
        return Rule(name, None, threshold, op, False, note, kind)
    passed = {">=": value >= threshold, "<=": value <= threshold, ">": value > threshold}[op]
    return Rule(name, float(value), threshold, op, bool(passed), note, kind)


def implicates_data(decision: GateDecision) -> bool:
    """Do the failures say the new data itself is suspect?

    Yes when its own test split cannot be learned (a floor fails), or when learning it made
    the model measurably forget (a non-inferiority rule fails *and* its point delta is below
    -margin). A non-inferiority CI that is merely too wide, a gain within the noise, too few
    rows, calibration or latency say "not yet", not "bad data".
    """
    if decision.mode != "challenge":
        return False
    for r in decision.rules:
        if r.passed:
            continue
        if r.kind == "floor":
            return True
        if r.kind == "non-inferiority" and r.point is not None and r.point < r.threshold:
            return True
    return False


def _get(evaluation: Evaluation, set_name: str, side: str, metric: str) -> float | None:
    found = evaluation.get(set_name)
    source = None if found is None else getattr(found, side)
    return None if source is None else source.get(metric)


def _ci_note(s: SetEvaluation | None) -> str:
    if s is None or _bad(s.delta.get("accuracy")):
        return ""
    nan = float("nan")
    return (f"delta {s.delta['accuracy']:+.4f}, 95% CI "
            f"[{s.ci_low.get('accuracy', nan):+.4f}, {s.ci_high.get('accuracy', nan):+.4f}]")


def _noninferior(s: SetEvaluation, policy: GateConfig) -> Rule:
    rule = check(f"{s.name} accuracy delta CI low (non-inferiority)", s.ci_low.get("accuracy"),
                 -policy.noninferiority_margin, ">=", _ci_note(s), "non-inferiority")
    point = s.delta.get("accuracy")
    return rule if _bad(point) else replace(rule, point=float(point))


def _slice_rules(evaluation: Evaluation, policy: GateConfig) -> list[Rule]:
    rules = []
    for s in evaluation.slices():
        if s.rows < policy.min_slice_rows:
            rules.append(Rule(f"{s.name} accuracy delta CI low (non-inferiority)", s.delta.get("accuracy"), 0.0,
                              "n/a", True, f"{s.rows} rows < min_slice_rows {policy.min_slice_rows}", "non-inferiority"))
        else:
            rules.append(_noninferior(s, policy))
    return rules


def decide(evaluation: Evaluation, policy: GateConfig, has_champion: bool) -> GateDecision:
    new = evaluation.get("new")
    rows = check("rows in new test split", None if new is None else float(new.rows), policy.min_eval_rows, kind="size")
    if not has_champion:
        b = policy.bootstrap
        rules = [
            rows,
            check("new accuracy (bootstrap)", _get(evaluation, "new", "challenger", "accuracy"), b.min_accuracy_new,
                  kind="floor"),
            check("new ece (bootstrap)", _get(evaluation, "new", "challenger", "ece"), b.max_ece, "<=", kind="calibration"),
        ]
        return GateDecision(all(r.passed for r in rules), "bootstrap", rules)

    rules = [
        rows,
        check("new accuracy", _get(evaluation, "new", "challenger", "accuracy"), policy.min_accuracy_new, kind="floor"),
        check("new macro_f1", _get(evaluation, "new", "challenger", "macro_f1"), policy.min_macro_f1_new, kind="floor"),
    ]
    gain = None if new is None else new.ci_low.get("accuracy")
    rules.append(check("new accuracy delta CI low (improvement)", gain, policy.min_improvement_new, ">", _ci_note(new),
                       "improvement"))
    regression = evaluation.get("regression")
    rules.append(_noninferior(regression, policy) if regression is not None
                 else check("regression accuracy delta CI low (non-inferiority)", None, -policy.noninferiority_margin,
                            kind="non-inferiority"))
    golden = evaluation.get("golden")
    if golden is not None:
        rules.append(_noninferior(golden, policy))
    rules += _slice_rules(evaluation, policy)
    rules.append(check("new ece", _get(evaluation, "new", "challenger", "ece"), policy.max_ece, "<=", kind="calibration"))
    lat = evaluation.latency_ms
    ratio = None
    if "challenger" in lat and "champion" in lat and lat["champion"]["p95"] > 0:
        ratio = lat["challenger"]["p95"] / lat["champion"]["p95"]
    rules.append(check("latency p95 ratio vs champion", ratio, policy.max_latency_ratio, "<=", kind="latency"))
    if policy.max_latency_p95_ms > 0:
        rules.append(check("latency p95 ms", lat.get("challenger", {}).get("p95"), policy.max_latency_p95_ms, "<=",
                           kind="latency"))
    return GateDecision(all(r.passed for r in rules), "challenge", rules)
