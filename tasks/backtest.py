"""Compare promotion policies on one replay of history: `kaizen backtest --policy NAME ...`.

The replay trains and evaluates each cycle's challenger once (the configured policy drives the
real promotions); every listed policy is then decided on those same evaluations. Each policy
keeps its own champion: the latest version it would have promoted. Its quality is measured
where no gate looks, on a large fixed reference set, after every cycle.

The approximation, stated: a challenger is always compared with the replay's real champion,
so a policy that would have promoted differently sees the evaluations of the real stream, not
of its own counterfactual one. That is what "decided on the same evaluations" means, and it is
what makes the policies comparable at the cost of one replay.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tasks.context import Context
from tasks.errors import KaizenError
from tasks.evaluate import Evaluation
from tasks.families import family_of, forgotten
from tasks.gate import decide, policy_from_config


@dataclass
class PolicyTrack:
    policy: str
    verdicts: list[str] = field(default_factory=list)  # per cycle: pass | hold | reject | -
    champions: list[str | None] = field(default_factory=list)  # per cycle, after it
    forgetting: list[float] = field(default_factory=list)  # of each version it promoted
    reference_accuracy: list[float | None] = field(default_factory=list)

    @property
    def promotions(self) -> int:
        return sum(v == "pass" for v in self.verdicts)

    @property
    def worst_forgetting(self) -> float | None:
        return max(self.forgetting) if self.forgetting else None


def cycle_evaluation(ctx: Context, run_id: str) -> Evaluation:
    import mlflow

    return Evaluation.from_json(mlflow.artifacts.load_text(f"runs:/{run_id}/evaluation.json"))


def track_policies(ctx: Context, cycles: list[dict], policies: list[str]) -> list[PolicyTrack]:
    """Decide every policy on every cycle's evaluation, in order, each with its own champion."""
    tracks = [PolicyTrack(p) for p in policies]
    driver = ctx.config.gate.policy
    for summary in cycles:
        run_id, version = summary.get("mlflow_run_id"), summary.get("version")
        evaluation = cycle_evaluation(ctx, run_id) if run_id and version else None
        # Only the replay's own policy holds candidates; one promoted on pooled evidence at the
        # start of a cycle is that policy's champion before the cycle's challenger is judged.
        looked = summary.get("candidate") or {}
        adopted = looked.get("version") if looked.get("outcome") == "promoted" else None
        for track in tracks:
            has_champion = summary.get("champion_before") is not None
            _decide_cycle(ctx, track, evaluation, version, has_champion, adopted if track.policy == driver else None)
    return tracks


def _decide_cycle(
    ctx: Context,
    track: PolicyTrack,
    evaluation: Evaluation | None,
    version: str | None,
    has_champion: bool,
    adopted: str | None,
) -> None:
    champion = adopted or (track.champions[-1] if track.champions else None)
    if evaluation is None or version is None:  # quarantined, nothing to do, or only a candidate look
        track.verdicts.append("-")
        track.champions.append(champion)
        return
    gate = ctx.config.gate.model_copy(update={"policy": track.policy})
    decision = decide(evaluation, gate, has_champion, policy_from_config(gate))
    track.verdicts.append(decision.verdict)
    if decision.passed:
        champion = version
        regression = evaluation.get("regression")
        lost = (
            None
            if regression is None
            else forgotten(family_of(evaluation.task), regression.champion, regression.challenger)
        )
        if lost is not None:
            track.forgetting.append(lost)
    track.champions.append(champion)


def reference_accuracies(ctx: Context, versions: set[str], reference: Path, scratch: Path) -> dict[str, float]:
    """The primary metric (accuracy for a classifier) of each version on a fixed file in the
    family's columns, evaluated as the cycle evaluates its frozen sets."""
    from tasks.demo_data import read_labelled
    from tasks.registry import download_model, get_version

    frame = read_labelled(reference, ctx.config.task)  # class indices named from a label_names.txt beside it
    out = {}
    for version in sorted(versions, key=int):
        model_dir = download_model(ctx.client, get_version(ctx.client, ctx.model_name, version), scratch / version)
        out[version] = primary_metric_of(model_dir, frame, ctx.config, reference)
    return out


def primary_metric_of(model_dir: Path, frame, config, reference: Path) -> float:
    """The family's primary metric of a saved model on `frame` (read from `reference`)."""
    from tasks.evaluate import examples_of
    from tasks.inference import choose_device

    family = family_of(config.task)
    model, tokenizer = family.load_saved(model_dir)
    try:
        examples = examples_of(frame, config.labels, tokenizer, config.model.max_length, config.task)
    except ValueError as exc:
        raise KaizenError(f"{reference}: reference file: {exc}") from None
    device = choose_device(config.train.device)
    scores = family.predict(model.to(device), examples.ids, tokenizer.pad_token_id or 0, 32, device)
    measured = family.evaluate_set("reference", examples, scores, None, config.labels, 0, 0)
    return float(measured.challenger[family.PRIMARY_METRIC])


def attach_reference(tracks: list[PolicyTrack], accuracy: dict[str, float]) -> None:
    for track in tracks:
        track.reference_accuracy = [accuracy.get(c) if c else None for c in track.champions]
