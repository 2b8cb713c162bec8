"""Turn an evaluation into a promotion decision, listing every rule with its outcome.

Every rule is checked before deciding (a reader sees all failures at once), and the gate
fails closed: a missing or NaN metric fails its rule. Two rule sets exist (docs/gate-policy.md):

- `legacy`: every comparison must *prove* itself on a two-sided 95% paired-bootstrap accuracy
  interval (improvement on `new`; non-inferiority on regression, golden and every slice).
- `evidence` (default): comparisons are judged on a proper scoring rule per example, paired,
  in accuracy-equivalent points. A rule passes on evidence, fails on evidence (of harm beyond
  the margin, corrected for multiplicity, or of no gain once the set could have shown one),
  and is *underpowered* when its set cannot resolve the margin yet; underpowered sets decide
  by a configured rule (hold by default: the challenger stays a candidate and evidence from
  fresh test splits accumulates). Slices are harm screens: only evidence of harm blocks.
- `no-harm`: the evidence rules, but promote unless harm is shown (underpowered never blocks).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from functools import lru_cache
from statistics import NormalDist

import numpy as np

from tasks.config import GateConfig
from tasks.evaluate import Evaluation, SetEvaluation, pool_evaluations
from tasks.families import family_of

POLICIES = ("legacy", "evidence", "no-harm")
CORRECTIONS = ("holm", "bh")
UNDERPOWERED = ("hold", "reject", "promote")
UNDERPOWERED_FIXED = ("screen", "hold")
SCORINGS = ("log_loss", "brier", "accuracy")
OUTCOMES = ("pass", "fail", "underpowered", "not judged")
# The legacy rules read two-sided 95% bootstrap intervals.
LEGACY_CONFIDENCE = 0.95


@dataclass(frozen=True)
class GatePolicy:
    """The gate's statistical knobs (GateConfig fields to be: see docs/gate-policy.md)."""

    name: str = "evidence"  # legacy | evidence | no-harm
    # Error budget: promoting a challenger that is not better (or is worse than the margin on a
    # judged set), summed over every look at accumulating evidence; also the family-wise (holm)
    # or false-discovery (bh) rate of blocking on harm that is not there.
    alpha: float = 0.05
    correction: str = "holm"  # holm (family-wise) | bh (false discovery rate)
    underpowered: str = "hold"  # what an unresolved set decides: hold | reject | promote
    # A fixed set (regression, golden: the same rows every cycle) that cannot resolve its margin
    # never will by waiting. screen: it only blocks on evidence of harm (family-corrected) and is
    # reported as underpowered; hold: it blocks like `new` (and holds until max_hold_rows).
    underpowered_fixed: str = "screen"
    scoring: str = "log_loss"  # log_loss | brier | accuracy (the last for comparison)
    # A set "resolves" an effect it would detect with this probability.
    power: float = 0.8
    # Fewer paired rows than this: the normal interval is not trusted, the rule is underpowered.
    min_evidence_rows: int = 30
    # A held challenger whose pooled `new` rows reach this many is rejected instead (0 = no limit).
    max_hold_rows: int = 2000
    # What the comparisons read, set by `decide` from the evaluation's family (tasks/families):
    # a higher-is-better metric and the key of its per-example paired gain.
    metric: str = "accuracy"
    gain: str = "correct_diff"

    def __post_init__(self) -> None:
        for knob, allowed in (
            ("name", POLICIES),
            ("correction", CORRECTIONS),
            ("underpowered", UNDERPOWERED),
            ("underpowered_fixed", UNDERPOWERED_FIXED),
            ("scoring", SCORINGS),
        ):
            if getattr(self, knob) not in allowed:
                raise ValueError(f"gate.{_config_key(knob)} must be one of {allowed}, got {getattr(self, knob)!r}")
        if not (0 < self.alpha < 1 and 0 < self.power < 1):
            raise ValueError("gate.alpha and gate.power must lie strictly between 0 and 1")
        if self.min_evidence_rows < 2 or self.max_hold_rows < 0:
            raise ValueError("gate.min_evidence_rows must be >= 2 and gate.max_hold_rows >= 0")


def _config_key(knob: str) -> str:
    return "policy" if knob == "name" else knob


def policy_from_config(config: GateConfig) -> GatePolicy:
    """The knobs from GateConfig, field by field, defaults where the config lacks them yet."""
    defaults = GatePolicy()
    return GatePolicy(
        **{f.name: getattr(config, _config_key(f.name), getattr(defaults, f.name)) for f in fields(GatePolicy)}
    )


@dataclass(frozen=True)
class Rule:
    name: str
    value: float | None
    threshold: float
    op: str  # ">=", "<=", ">" or "n/a" (reported, not judged)
    passed: bool  # False = this rule stands in the way of promotion
    note: str = ""
    kind: str = ""  # size | floor | improvement | non-inferiority | calibration | latency
    point: float | None = None  # the point delta behind an interval-based rule
    outcome: str = ""  # pass | fail | underpowered | not judged (derived from passed/op when empty)
    half_width: float | None = None  # of the interval the rule reads, at its (corrected) level
    resolvable: float | None = None  # smallest effect the set detects with the policy's power

    def __post_init__(self) -> None:
        if not self.outcome:
            derived = "not judged" if self.op == "n/a" else ("pass" if self.passed else "fail")
            object.__setattr__(self, "outcome", derived)


@dataclass(frozen=True)
class GateDecision:
    passed: bool  # promote
    mode: str  # "bootstrap" (no champion) or "challenge"
    rules: list[Rule]
    held: bool = False  # not promoted only for want of evidence: the challenger stays a candidate
    policy: str = ""

    @property
    def verdict(self) -> str:
        return "pass" if self.passed else ("hold" if self.held else "reject")

    @property
    def reasons(self) -> list[str]:
        return [describe(r) for r in self.rules if r.outcome in ("fail", "underpowered")]

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "verdict": self.verdict, "reasons": self.reasons}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> GateDecision:
        raw = json.loads(text)
        return cls(
            raw["passed"], raw["mode"], [Rule(**r) for r in raw["rules"]], raw.get("held", False), raw.get("policy", "")
        )

    def to_markdown(self) -> str:
        policy = f"; policy {self.policy}" if self.policy else ""
        lines = [
            f"**Gate: {self.verdict}** ({self.mode}{policy})",
            "",
            "| rule | value | threshold | outcome | ± half-width | resolvable | note |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in self.rules:
            threshold = r.note if r.op == "n/a" else f"{r.op} {r.threshold:g}"
            note = "" if r.op == "n/a" else r.note
            lines.append(
                f"| {r.name} | {_fmt(r.value)} | {threshold} | {_outcome_cell(r)} | {_fmt(r.half_width, '')} "
                f"| {_fmt(r.resolvable, '')} | {note} |"
            )
        return "\n".join(lines)


def _outcome_cell(rule: Rule) -> str:
    if rule.outcome == "fail":
        return "FAIL"
    if rule.outcome == "underpowered":
        return "underpowered (advisory)" if rule.passed else "UNDERPOWERED"
    return rule.outcome


def _bad(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _fmt(value: float | None, missing: str = "missing") -> str:
    return missing if _bad(value) else f"{value:.4f}"


def describe(rule: Rule) -> str:
    text = f"{rule.name} = {_fmt(rule.value)}, needs {rule.op} {rule.threshold:g}"
    if rule.outcome == "underpowered":
        text += " (underpowered" + (", advisory)" if rule.passed else ")")
    return f"{text} ({rule.note})" if rule.note else text


def check(name: str, value: float | None, threshold: float, op: str = ">=", note: str = "", kind: str = "") -> Rule:
    if _bad(value):
        return Rule(name, None, threshold, op, False, note, kind)
    passed = {">=": value >= threshold, "<=": value <= threshold, ">": value > threshold, "<": value < threshold}[op]
    return Rule(name, float(value), threshold, op, bool(passed), note, kind)


def implicates_data(decision: GateDecision) -> bool:
    """Do the failures say the new data itself is suspect?

    Yes when its own test split cannot be learned (a floor fails), or when learning it made
    the model measurably forget (a non-inferiority rule fails *and* its point delta is below
    -margin). A merely wide interval (underpowered, under any policy's name for it), a gain
    within the noise, too few rows, calibration or latency say "not yet", not "bad data".
    """
    if decision.mode != "challenge":
        return False
    for r in decision.rules:
        if r.passed or r.outcome != "fail":
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


# ---------------------------------------------------------------- statistics


@lru_cache(maxsize=4096)
def z_quantile(tail: float) -> float:
    """z with P(Z > z) = tail."""
    return NormalDist().inv_cdf(1 - tail)


def adjust_pvalues(pvalues: list[float], method: str) -> list[float]:
    """Holm (family-wise) or Benjamini-Hochberg (false discovery rate) adjusted p-values, in
    input order; a hypothesis is rejected at level alpha when its adjusted p <= alpha."""
    k = len(pvalues)
    order = sorted(range(k), key=lambda i: pvalues[i])
    adjusted = [0.0] * k
    if method == "holm":
        running = 0.0
        for rank, i in enumerate(order):
            running = max(running, min(1.0, (k - rank) * pvalues[i]))
            adjusted[i] = running
    elif method == "bh":
        running = 1.0
        for rank in range(k - 1, -1, -1):
            i = order[rank]
            running = min(running, k * pvalues[i] / (rank + 1))
            adjusted[i] = running
    else:
        raise ValueError(f"unknown correction {method!r}")
    return adjusted


@dataclass(frozen=True)
class PairedStat:
    """Mean per-example gain of challenger over champion on one set, in accuracy points."""

    rows: int
    point: float  # positive = challenger better
    se: float  # standard error of the mean
    scale: float  # score units per accuracy point (1.0 when judged on accuracy)
    scoring: str  # what was judged: the configured score, or accuracy when its scale is undefined


def _score_scale(s: SetEvaluation, parent: SetEvaluation | None, scoring: str) -> float | None:
    """Score units per accuracy point: the champion's mean loss on a wrong row minus on a right
    row. A slice borrows its parent set's (a few dozen rows hold too few errors to measure it)."""
    for source in (parent, s):
        for side in ("champion", "challenger"):
            gap = ((getattr(source, side) or {}) if source is not None else {}).get(f"{scoring}_gap")
            if gap is not None and math.isfinite(gap) and gap > 0:
                return float(gap)
    return None


def paired_stat(
    s: SetEvaluation,
    scoring: str,
    parent: SetEvaluation | None = None,
    metric: str = "accuracy",
    gain: str = "correct_diff",
) -> PairedStat | None:
    """The per-example gain on `s` under `scoring`, expressed in points of the gate's `metric`
    (accuracy for a classifier): a score gain divided by the score's right-vs-wrong gap, so
    margins stay in the units they are set in. `scoring` = `metric` reads the metric's own
    paired gain (`paired[gain]`). None (the rule fails closed) without paired evidence or with
    a missing or NaN value."""
    paired = s.paired or {}
    scale = 1.0 if scoring == metric else _score_scale(s, parent, scoring)
    used = scoring if scale is not None else metric  # no errors at all (or no such score): nothing to scale by
    values = paired.get(gain if used == metric else f"{used}_gain")
    if values is None or len(values) < 2:
        return None
    x = np.asarray(values, dtype=np.float64) / (scale or 1.0)
    if not np.isfinite(x).all():
        return None
    return PairedStat(len(x), float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x))), scale or 1.0, used)


def harm_pvalue(stat: PairedStat, margin: float) -> float:
    """One-sided p-value of H0 "the challenger is no worse than -margin" (small = harm shown)."""
    if stat.se == 0:
        return 0.0 if stat.point < -margin else 1.0
    return NormalDist().cdf((stat.point + margin) / stat.se)


# ---------------------------------------------------------------- legacy rules


def _ci_note(s: SetEvaluation | None, metric: str = "accuracy") -> str:
    if s is None or _bad(s.delta.get(metric)):
        return ""
    low, high = s.ci_low.get(metric), s.ci_high.get(metric)
    if _bad(low) or _bad(high):  # pooled without resampling
        return f"delta {s.delta[metric]:+.4f}"
    return f"delta {s.delta[metric]:+.4f}, 95% CI [{low:+.4f}, {high:+.4f}]"


def _with_width(rule: Rule, s: SetEvaluation | None, knobs: GatePolicy) -> Rule:
    """Half-width and resolvable effect of the bootstrap interval a legacy rule reads."""
    m = knobs.metric
    if s is None or _bad(s.ci_low.get(m)) or _bad(s.ci_high.get(m)):
        return rule
    half = (s.ci_high[m] - s.ci_low[m]) / 2
    z = z_quantile((1 - LEGACY_CONFIDENCE) / 2)
    return replace(rule, half_width=half, resolvable=half * (z + z_quantile(1 - knobs.power)) / z)


def _noninferior(s: SetEvaluation, policy: GateConfig, knobs: GatePolicy) -> Rule:
    m = knobs.metric
    rule = check(
        f"{s.name} {m} delta CI low (non-inferiority)",
        s.ci_low.get(m),
        -policy.noninferiority_margin,
        ">=",
        _ci_note(s, m),
        "non-inferiority",
    )
    point = s.delta.get(m)
    rule = _with_width(rule, s, knobs)
    return rule if _bad(point) else replace(rule, point=float(point))


def _slice_rules(evaluation: Evaluation, policy: GateConfig, knobs: GatePolicy) -> list[Rule]:
    rules, m = [], knobs.metric
    for s in evaluation.slices():
        if s.rows < policy.min_slice_rows:
            rules.append(_not_judged(s, policy, f"{m} delta CI low (non-inferiority)", s.delta.get(m)))
        else:
            rules.append(_noninferior(s, policy, knobs))
    return rules


def _not_judged(s: SetEvaluation, policy: GateConfig, what: str, value: float | None) -> Rule:
    return Rule(
        f"{s.name} {what}",
        value,
        0.0,
        "n/a",
        True,
        f"{s.rows} rows < min_slice_rows {policy.min_slice_rows}",
        "non-inferiority",
    )


def _legacy_comparisons(evaluation: Evaluation, policy: GateConfig, knobs: GatePolicy) -> list[Rule]:
    new, m = evaluation.get("new"), knobs.metric
    gain = None if new is None else new.ci_low.get(m)
    rules = [
        _with_width(
            check(
                f"new {m} delta CI low (improvement)",
                gain,
                policy.min_improvement_new,
                ">",
                _ci_note(new, m),
                "improvement",
            ),
            new,
            knobs,
        )
    ]
    regression = evaluation.get("regression")
    rules.append(
        _noninferior(regression, policy, knobs)
        if regression is not None
        else check(
            f"regression {m} delta CI low (non-inferiority)",
            None,
            -policy.noninferiority_margin,
            kind="non-inferiority",
        )
    )
    golden = evaluation.get("golden")
    if golden is not None:
        rules.append(_noninferior(golden, policy, knobs))
    return rules + _slice_rules(evaluation, policy, knobs)


# ---------------------------------------------------------------- evidence rules


@dataclass(frozen=True)
class _Target:
    """One comparison to judge: a set, its role, the set its score scale comes from."""

    name: str
    role: str  # improvement | non-inferiority | harm (a slice)
    found: SetEvaluation | None
    parent: SetEvaluation | None = None


@dataclass(frozen=True)
class _Judged:
    target: _Target
    stat: PairedStat | None  # what the rule reads: the configured score for `new`, accuracy otherwise
    harm_p: float | None = None  # accuracy harm, adjusted for multiplicity
    family: int = 1  # comparisons in the harm family
    second: PairedStat | None = None  # `new` only: paired accuracy, the improvement's second test


def _targets(evaluation: Evaluation) -> list[_Target]:
    targets = [
        _Target("new", "improvement", evaluation.get("new")),
        _Target("regression", "non-inferiority", evaluation.get("regression")),
    ]
    if evaluation.get("golden") is not None:
        targets.append(_Target("golden", "non-inferiority", evaluation.get("golden")))
    for s in evaluation.slices():
        targets.append(_Target(s.name, "harm", s, evaluation.get(s.name.split("/")[0])))
    return targets


def _judge_all(targets: list[_Target], policy: GateConfig, knobs: GatePolicy) -> list[_Judged]:
    """Paired statistics for every judged target, and their harm p-values corrected together:
    each comparison is a chance to block by accident, so the family shares one alpha.

    Harm and non-inferiority are judged on paired accuracy: a challenger that is more accurate
    but less well calibrated is not harmed data (calibration has its own budget, max_ece). The
    proper score adds power where it helps, to show an improvement on `new` (replayed on SST-2:
    a challenger +10 accuracy points on `new` and +3 on regression, but worse in log-loss, was
    rejected and its batch withdrawn when harm was read on log-loss)."""
    m, g = knobs.metric, knobs.gain
    accuracy = [None if t.found is None else paired_stat(t.found, m, None, m, g) for t in targets]
    score = [None if t.found is None else paired_stat(t.found, knobs.scoring, t.parent, m, g) for t in targets]
    tested = [i for i, stat in enumerate(accuracy) if stat is not None]
    raw = [harm_pvalue(accuracy[i], policy.noninferiority_margin) for i in tested]
    adjusted = dict(zip(tested, adjust_pvalues(raw, knobs.correction), strict=True))
    family = max(1, len(tested))
    return [
        _Judged(t, score[i], adjusted.get(i), family, accuracy[i])
        if t.role == "improvement"
        else _Judged(t, accuracy[i], adjusted.get(i), family)
        for i, t in enumerate(targets)
    ]


def _rule_name(target: _Target, scoring: str) -> str:
    # A harm screen reads the interval's upper end (does it reach below -margin?), the other
    # rules its lower end (does it clear the threshold?), as the legacy names say "CI low".
    bound = "CI high (harm screen)" if target.role == "harm" else f"CI low ({target.role})"
    return f"{target.name} {scoring} gain {bound}"


def _evidence_note(j: _Judged, knobs: GatePolicy) -> str:
    """The raw score and its conversion, the accuracy delta, the corrected harm p-value; short,
    because gate.md also becomes the registry's model-version description."""
    stat, s, m = j.stat, j.target.found, knobs.metric
    parts = []
    if stat.scoring != m:
        unit = "nats" if stat.scoring == "log_loss" else "brier"
        parts.append(
            f"{stat.scoring} {stat.point * stat.scale:+.4f} {unit} = {stat.point:+.4f} pts ({stat.scale:.3f} {unit}/pt)"
        )
    elif knobs.scoring != m and j.target.role == "improvement":
        parts.append(f"judged on {m}: no {knobs.scoring} scale here")
    if s is not None and not _bad(s.delta.get(m)):
        short = "acc" if m == "accuracy" else m
        parts.append(_ci_note(s, m).replace("delta", short, 1).replace(", 95% CI", ""))
    parts.append(f"harm p {j.harm_p:.3g} ({knobs.correction}, {j.family} tests)")
    return "; ".join(parts)


def _level(role: str, looks: int, family: int, knobs: GatePolicy) -> float:
    """One-sided error level of the interval a rule reads.

    Pass-side tests (improvement, non-inferiority) spend alpha / (k (k + 1)) at a set's k-th
    look: alpha/2 (the lower bound of the old two-sided 95% interval), alpha/6, alpha/12, ...,
    which sums to alpha, so the chance of *ever* promoting a challenger that is not better
    stays under alpha however many cycles evidence accumulates over. A set re-evaluated on the
    same rows is one look: the same models on the same rows give the same answer. A harm
    screen reads the Bonferroni level of its family (Holm's first step), the widest interval
    the correction uses.
    """
    return knobs.alpha / family if role == "harm" else knobs.alpha / (looks * (looks + 1))


def _outcome(role: str, shown: bool, refuted: bool, powered: bool, knobs: GatePolicy) -> str:
    """pass | fail | underpowered, from what the evidence shows and whether the set has power.

    refuted: harm beyond the margin shown (family-corrected), or for the improvement rule the
    interval lies wholly at or below the threshold (shown *not* better: waiting cannot help).
    """
    if refuted:
        return "fail"
    if knobs.name == "no-harm" and role == "improvement":
        return "fail" if not shown else ("pass" if powered else "underpowered")
    if shown:
        return "pass"
    if role == "harm" or knobs.name == "no-harm":
        return "pass" if powered else "underpowered"
    # A set that could have shown it and did not: evidence against, not a wide interval.
    return "fail" if powered else "underpowered"


def _blocks(role: str, outcome: str, knobs: GatePolicy) -> bool:
    if outcome == "fail":
        return True
    if role == "non-inferiority" and knobs.underpowered_fixed == "screen":
        return False  # harm on it already failed above ("refuted"); more rows will never come
    # Slices only screen for harm, and no-harm promotes what it cannot judge.
    return outcome == "underpowered" and role != "harm" and knobs.name == "evidence" and knobs.underpowered != "promote"


def _improvement_tests(j: _Judged, knobs: GatePolicy) -> list[PairedStat]:
    """`new` can show its gain on the configured score or on accuracy; the error budget is
    split between the two (Bonferroni), so either may pass without raising the error rate."""
    both = j.target.role == "improvement" and knobs.name == "evidence" and j.second is not None
    return [j.stat, j.second] if both and j.stat.scoring != knobs.metric else [j.stat]


def _evidence_rule(j: _Judged, policy: GateConfig, knobs: GatePolicy) -> Rule:
    target, margin = j.target, policy.noninferiority_margin
    improvement = target.role == "improvement"
    kind = "improvement" if improvement else "non-inferiority"
    threshold = policy.min_improvement_new if improvement else -margin
    op = ">" if improvement else ">="
    # `new` is named after the configured score where the family records it per example.
    paired = None if target.found is None else target.found.paired
    scored = improvement and (not paired or f"{knobs.scoring}_gain" in paired)
    name = _rule_name(target, knobs.scoring if scored else knobs.metric)
    if j.stat is None:  # missing set, missing evidence or a NaN: fail closed
        return Rule(name, None, threshold, op, False, "no paired evidence", kind, outcome="fail")
    tests = _improvement_tests(j, knobs)
    z = z_quantile(_level(target.role, target.found.looks, j.family, knobs) / len(tests))
    stat = max(tests, key=lambda t: t.point - z * t.se)  # the test closest to showing the gain
    half = z * stat.se
    resolvable = min((z + z_quantile(1 - knobs.power)) * t.se for t in tests)
    low = stat.point if knobs.name == "no-harm" and improvement else stat.point - half  # no-harm: point gain
    shown = low > threshold if improvement else low >= threshold
    # Shown not better (on every test): an error only against a better challenger, so it spends
    # nothing. Not on fewer than min_evidence_rows: a small set with no discordant rows has a
    # zero-width interval that says nothing (no errors in 40 rows still allows a 7% error rate).
    futile = (
        improvement
        and knobs.name == "evidence"
        and stat.rows >= knobs.min_evidence_rows
        and all(t.point + z_quantile(knobs.alpha / 2) * t.se <= threshold for t in tests)
    )
    refuted = futile or (j.harm_p is not None and j.harm_p <= knobs.alpha)
    powered = resolvable <= margin and stat.rows >= knobs.min_evidence_rows
    outcome = _outcome(target.role, shown, refuted, powered, knobs)
    note = _evidence_note(j, knobs)
    if outcome == "underpowered":
        note = f"{_needed(stat, resolvable, margin, knobs)}; {note}"
    value = stat.point + half if target.role == "harm" else low  # see _rule_name
    return Rule(
        name,
        value,
        threshold,
        op,
        not _blocks(target.role, outcome, knobs),
        note,
        kind,
        stat.point,
        outcome,
        half,
        resolvable,
    )


def _needed(stat: PairedStat, resolvable: float, margin: float, knobs: GatePolicy) -> str:
    """How far from resolving the margin: rows needed at the current spread."""
    if margin <= 0:
        return f"resolves {resolvable:.4f}; a zero margin never resolves"
    rows = max(knobs.min_evidence_rows, math.ceil(stat.rows * (resolvable / margin) ** 2))
    return f"needs ~{rows} rows to resolve {margin:g} (has {stat.rows})"


def _evidence_comparisons(evaluation: Evaluation, policy: GateConfig, knobs: GatePolicy) -> list[Rule]:
    targets = _targets(evaluation)
    judged = [t for t in targets if t.role != "harm" or t.found.rows >= policy.min_slice_rows]
    small = [t for t in targets if t.role == "harm" and t.found.rows < policy.min_slice_rows]
    rules = [_evidence_rule(j, policy, knobs) for j in _judge_all(judged, policy, knobs)]
    what = f"{knobs.metric} gain (harm screen)"
    return rules + [_not_judged(t.found, policy, what, t.found.delta.get(knobs.metric)) for t in small]


# ---------------------------------------------------------------- the decision


def _floor_rules(evaluation: Evaluation, policy: GateConfig, bootstrap: bool) -> tuple[list[Rule], list[Rule]]:
    """(size and the family's floors, its calibration budget) on the challenger's `new` metrics."""
    new = evaluation.get("new")
    suffix = " (bootstrap)" if bootstrap else ""
    head = [
        check("rows in new test split", None if new is None else float(new.rows), policy.min_eval_rows, kind="size")
    ]
    tail = []
    for metric, threshold, op, kind in family_of(evaluation.task).floors(policy, bootstrap):
        rule = check(f"new {metric}{suffix}", _get(evaluation, "new", "challenger", metric), threshold, op, kind=kind)
        (tail if kind == "calibration" else head).append(rule)
    return head, tail


def _bootstrap_rules(evaluation: Evaluation, policy: GateConfig) -> list[Rule]:
    head, tail = _floor_rules(evaluation, policy, bootstrap=True)
    return head + tail


def _absolute_rules(evaluation: Evaluation, policy: GateConfig) -> tuple[list[Rule], list[Rule]]:
    """(size and floors, calibration and latency): judged alike by every policy."""
    head, tail = _floor_rules(evaluation, policy, bootstrap=False)
    lat = evaluation.latency_ms
    ratio = None
    if "challenger" in lat and "champion" in lat and lat["champion"]["p95"] > 0:
        ratio = lat["challenger"]["p95"] / lat["champion"]["p95"]
    tail.append(check("latency p95 ratio vs champion", ratio, policy.max_latency_ratio, "<=", kind="latency"))
    if policy.max_latency_p95_ms > 0:
        tail.append(
            check(
                "latency p95 ms", lat.get("challenger", {}).get("p95"), policy.max_latency_p95_ms, "<=", kind="latency"
            )
        )
    return head, tail


def _conclude(rules: list[Rule], mode: str, knobs: GatePolicy, new_rows: int) -> GateDecision:
    """Promote when nothing blocks; hold when only underpowered rules block (and the policy
    holds); otherwise reject. A hold that reached max_hold_rows of evidence becomes a reject."""
    blocking = [r for r in rules if not r.passed]
    if not blocking:
        return GateDecision(True, mode, rules, False, knobs.name)
    waiting = all(r.outcome == "underpowered" for r in blocking) and knobs.underpowered == "hold"
    if waiting and 0 < knobs.max_hold_rows <= new_rows:
        limit = Rule(
            "pooled rows in new while held",
            float(new_rows),
            float(knobs.max_hold_rows),
            "<",
            False,
            "hold limit reached: the margin is still unresolved, so stop waiting",
            "size",
        )
        return GateDecision(False, mode, rules + [limit], False, knobs.name)
    return GateDecision(False, mode, rules, waiting, knobs.name)


def decide(
    evaluation: Evaluation, policy: GateConfig, has_champion: bool, knobs: GatePolicy | None = None
) -> GateDecision:
    """The gate. `knobs` defaults to the policy named in `policy` (see policy_from_config).

    The evaluation's family (tasks/families) says which metric the comparisons read and in
    what units the improvement threshold and the non-inferiority margin are (`thresholds`)."""
    family = family_of(evaluation.task)
    knobs = replace(knobs or policy_from_config(policy), metric=family.GATE_METRIC, gain=family.PAIRED_GAIN)
    least, margin = family.thresholds(policy)
    policy = policy.model_copy(update={"min_improvement_new": least, "noninferiority_margin": margin})
    if not has_champion:
        rules = _bootstrap_rules(evaluation, policy)
        return GateDecision(all(r.passed for r in rules), "bootstrap", rules, False, knobs.name)
    head, tail = _absolute_rules(evaluation, policy)
    if knobs.name == "legacy":
        comparisons = _legacy_comparisons(evaluation, policy, knobs)
    else:
        comparisons = _evidence_comparisons(evaluation, policy, knobs)
    new = evaluation.get("new")
    return _conclude(head + comparisons + tail, "challenge", knobs, 0 if new is None else new.rows)


def decide_accumulated(
    parts: list[Evaluation], policy: GateConfig, knobs: GatePolicy | None = None, fresh: tuple[str, ...] = ("new",)
) -> GateDecision:
    """Decide on a held challenger's pooled evidence (`parts` oldest first, same two models;
    see tasks.evaluate.pool_evaluations for which sets pool). Its error budget is spent
    across the looks, so deciding again after every cycle stays within alpha."""
    return decide(pool_evaluations(parts, fresh), policy, True, knobs)
