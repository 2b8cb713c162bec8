"""Turn an evaluation into a promotion decision, listing every rule with its outcome.

Every rule is checked before deciding (a reader sees all failures at once), and the gate
fails closed: a missing or NaN metric fails its rule.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

from tasks.config import GateConfig
from tasks.evaluate import Evaluation


@dataclass(frozen=True)
class Rule:
    name: str
    value: float | None
    threshold: float
    op: str  # ">=" or "<="
    passed: bool


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

    def to_markdown(self) -> str:
        lines = [f"**Gate: {self.verdict}** ({self.mode})", "", "| rule | value | threshold | outcome |", "|---|---|---|---|"]
        for r in self.rules:
            value = "missing" if r.value is None or _bad(r.value) else f"{r.value:.4f}"
            lines.append(f"| {r.name} | {value} | {r.op} {r.threshold:g} | {'pass' if r.passed else 'FAIL'} |")
        return "\n".join(lines)


def _bad(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def describe(rule: Rule) -> str:
    value = "missing" if _bad(rule.value) else f"{rule.value:.4f}"
    return f"{rule.name} = {value}, needs {rule.op} {rule.threshold:g}"


def check(name: str, value: float | None, threshold: float, op: str = ">=") -> Rule:
    if _bad(value):
        return Rule(name, None, threshold, op, False)
    passed = value >= threshold if op == ">=" else value <= threshold
    return Rule(name, float(value), threshold, op, bool(passed))


def _metric(evaluation: Evaluation, set_name: str, side: str, metric: str) -> float | None:
    found = evaluation.get(set_name)
    if found is None:
        return None
    source = getattr(found, side)
    return None if source is None else source.get(metric)


def decide(evaluation: Evaluation, policy: GateConfig, has_champion: bool) -> GateDecision:
    new = evaluation.get("new")
    rules = [check("rows in new test split", None if new is None else float(new.rows), policy.min_eval_rows)]
    if not has_champion:
        rules.append(
            check("new accuracy (bootstrap)", _metric(evaluation, "new", "challenger", "accuracy"),
                  policy.bootstrap.min_accuracy_new)
        )
        return GateDecision(all(r.passed for r in rules), "bootstrap", rules)
    rules += [
        check("new accuracy", _metric(evaluation, "new", "challenger", "accuracy"), policy.min_accuracy_new),
        check("new macro_f1", _metric(evaluation, "new", "challenger", "macro_f1"), policy.min_macro_f1_new),
        check("new accuracy delta vs champion", _metric(evaluation, "new", "delta", "accuracy"), -policy.max_new_drop),
        check(
            "regression accuracy delta vs champion",
            _metric(evaluation, "regression", "delta", "accuracy"),
            -policy.max_regression_drop,
        ),
    ]
    return GateDecision(all(r.passed for r in rules), "challenge", rules)
