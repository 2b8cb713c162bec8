import numpy as np
import pytest

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

    ex = Examples([np.zeros(n) for n in (3, 20, 60, 5)], np.array([0, 1, 0, 1]),
                  pd.DataFrame({"domain": ["a", "b", "a", None]}))
    slices = {k: v.tolist() for k, v in slice_index(ex, ["domain", "absent"], [16, 48]).items()}
    assert slices == {"domain=(missing)": [3], "domain=a": [0, 2], "domain=b": [1],
                      "length=1-16 tokens": [0, 3], "length=17-48 tokens": [1], "length=>48 tokens": [2]}
