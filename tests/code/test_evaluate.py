import numpy as np
import pandas as pd
import pytest

from tasks.dataset import Examples
from tasks.evaluate import expected_calibration_error, macro_f1, metrics, paired_bootstrap, per_class, slice_index


def test_macro_f1_known_value():
    y = np.array([0, 0, 1, 1])
    p = np.array([0, 1, 1, 1])
    # class 0: tp1 fp0 fn1 -> 2/3; class 1: tp2 fp1 fn0 -> 4/5
    assert macro_f1(y, p, 2) == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert metrics(y, p, 2)["accuracy"] == pytest.approx(0.75)


def test_empty_set_gives_nan():
    m = metrics(np.array([], dtype=int), np.array([], dtype=int), 2)
    assert np.isnan(m["accuracy"]) and np.isnan(m["macro_f1"])


def test_paired_bootstrap_interval_brackets_delta_and_is_seeded():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    a = np.where(rng.random(400) < 0.9, y, 1 - y)
    b = np.where(rng.random(400) < 0.7, y, 1 - y)
    out = paired_bootstrap(y, a, b, 2, resamples=300, seed=1)
    delta, low, high = out["accuracy"]
    assert low < delta < high
    assert low > 0  # a is clearly better than b
    assert out == paired_bootstrap(y, a, b, 2, resamples=300, seed=1)


def test_identical_models_have_zero_width_interval():
    y = np.array([0, 1, 0, 1, 1])
    out = paired_bootstrap(y, y, y, 2, resamples=100, seed=0)
    assert out["accuracy"] == (0.0, 0.0, 0.0)


def test_bootstrap_macro_f1_matches_point_value_on_identity_resample():
    y = np.array([0, 1, 1, 0, 1, 1])
    a, b = np.array([0, 1, 0, 0, 1, 1]), np.array([1, 1, 1, 0, 0, 1])
    out = paired_bootstrap(y, a, b, 2, resamples=200, seed=3)
    assert out["macro_f1"][0] == pytest.approx(macro_f1(y, a, 2) - macro_f1(y, b, 2))
    assert out["macro_f1"][1] <= out["macro_f1"][0] <= out["macro_f1"][2]


def test_ece_of_perfect_and_overconfident_models():
    y = np.array([0, 1, 0, 1])
    perfect = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(y, perfect) == pytest.approx(0.0)
    wrong = perfect[:, ::-1]  # always confident, always wrong
    assert expected_calibration_error(y, wrong) == pytest.approx(1.0)


def test_per_class_precision_recall():
    y, p = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])
    pc = per_class(y, p, ["neg", "pos"])
    assert pc["neg"]["precision"] == 1.0 and pc["neg"]["recall"] == 0.5
    assert pc["pos"]["precision"] == pytest.approx(2 / 3) and pc["pos"]["support"] == 2


def test_slices_by_column_and_token_length():
    import pandas as pd

    from tasks.dataset import Examples

    ex = Examples(
        [np.zeros(n) for n in (3, 20, 60, 5)], np.array([0, 1, 0, 1]), pd.DataFrame({"domain": ["a", "b", "a", None]})
    )
    slices = {k: v.tolist() for k, v in slice_index(ex, ["domain", "absent"], [16, 48]).items()}
    assert slices == {
        "domain=(missing)": [3],
        "domain=a": [0, 2],
        "domain=b": [1],
        "length=1-16 tokens": [0, 3],
        "length=17-48 tokens": [1],
        "length=>48 tokens": [2],
    }


def _two_models(rows: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, a challenger right on 90% of rows and a champion right on 75%, as probabilities."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, rows)
    chal = np.where(rng.random(rows) < 0.9, y, 1 - y)
    champ = np.where(rng.random(rows) < 0.75, y, 1 - y)
    sure = rng.uniform(0.55, 0.95, (2, rows))
    return y, *(
        np.stack([np.where(p == 0, s, 1 - s), np.where(p == 1, s, 1 - s)], axis=1)
        for p, s in ((chal, sure[0]), (champ, sure[1]))
    )


def _examples(y: np.ndarray) -> Examples:
    return Examples([np.array([1])] * len(y), y, pd.DataFrame(index=range(len(y))))


def test_proper_scores_and_their_right_wrong_gap():
    from tasks.evaluate import example_losses

    y = np.array([0, 1, 1])
    proba = np.array([[0.8, 0.2], [0.4, 0.6], [0.7, 0.3]])
    losses = example_losses(y, proba)
    assert losses["log_loss"] == pytest.approx(-np.log([0.8, 0.6, 0.3]))
    assert losses["brier"] == pytest.approx([0.08, 0.32, 0.98])
    m = metrics(y, proba.argmax(axis=1), 2, proba)
    assert m["log_loss"] == pytest.approx(-np.log([0.8, 0.6, 0.3]).mean())
    # one wrong row (the third) against two right ones
    assert m["log_loss_gap"] == pytest.approx(-np.log(0.3) + (np.log(0.8) + np.log(0.6)) / 2)
    assert np.isnan(metrics(y[:2], proba[:2].argmax(axis=1), 2, proba[:2])["brier_gap"])  # no wrong row
    # a probability of 0 for the true label costs a bounded, not an infinite, log-loss
    assert np.isfinite(example_losses(np.array([1]), np.array([[1.0, 0.0]]))["log_loss"]).all()


def test_paired_evidence_carries_the_score_deltas_and_round_trips():
    from tasks.evaluate import Evaluation, evaluate_predictions

    y, chal, champ = _two_models()
    s = evaluate_predictions("new", _examples(y), chal, champ, ["neg", "pos"], 300, 1)
    paired = s.paired
    assert len(paired["correct_diff"]) == len(paired["log_loss_gain"]) == len(paired["brier_gain"]) == 200
    assert set(paired["correct_diff"]) <= {-1, 0, 1}
    assert np.mean(paired["correct_diff"]) == pytest.approx(s.delta["accuracy"])
    for score in ("log_loss", "brier"):
        # delta is challenger - champion (negative = challenger better); gains are champion - challenger
        assert s.delta[score] == pytest.approx(s.challenger[score] - s.champion[score])
        assert -np.mean(paired[f"{score}_gain"]) == pytest.approx(s.delta[score], abs=1e-6)
        assert s.ci_low[score] <= s.delta[score] <= s.ci_high[score] < 0  # clearly better
    evaluation = Evaluation([s], ["neg", "pos"], resamples=300)
    text = evaluation.to_json()
    assert Evaluation.from_json(text) == evaluation
    assert '"correct_diff": [' in text and text.count("\n") < 200  # one line per list, not per row


def test_score_intervals_resample_the_same_rows_as_accuracy():
    from tasks.evaluate import bootstrap_mean, paired_evidence

    y, chal, champ = _two_models(150, seed=4)
    diff = np.asarray(paired_evidence(y, chal, champ)["correct_diff"], dtype=float)
    boot = paired_bootstrap(y, chal.argmax(axis=1), champ.argmax(axis=1), 2, resamples=400, seed=8)
    assert bootstrap_mean(diff, 400, 8) == pytest.approx(boot["accuracy"])


def test_pooling_concatenates_disjoint_fresh_evidence():
    from tasks.evaluate import SetEvaluation, evaluate_predictions, pool_sets

    parts = []
    for seed, rows in ((1, 120), (2, 80)):
        y, chal, champ = _two_models(rows, seed)
        parts.append(evaluate_predictions("new", _examples(y), chal, champ, ["neg", "pos"], 200, 0))
    pooled = pool_sets(parts, resamples=200)
    assert (pooled.rows, pooled.looks) == (200, 2)
    assert pooled.paired["correct_diff"] == parts[0].paired["correct_diff"] + parts[1].paired["correct_diff"]
    exact = (120 * parts[0].challenger["accuracy"] + 80 * parts[1].challenger["accuracy"]) / 200
    assert pooled.challenger["accuracy"] == pytest.approx(exact)
    assert pooled.delta["accuracy"] == pytest.approx(np.mean(pooled.paired["correct_diff"]))
    assert pooled.ci_low["log_loss"] <= pooled.delta["log_loss"] <= pooled.ci_high["log_loss"]
    assert (
        pooled.confusion["challenger"]
        == (np.array(parts[0].confusion["challenger"]) + parts[1].confusion["challenger"]).tolist()
    )
    no_evidence = SetEvaluation("new", "set", 10, {"accuracy": 0.9}, {"accuracy": 0.8})
    with pytest.raises(ValueError, match="paired evidence"):
        pool_sets([parts[0], no_evidence])
