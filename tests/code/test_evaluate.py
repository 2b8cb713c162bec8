import numpy as np
import pytest

from tasks.evaluate import macro_f1, metrics, paired_bootstrap


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
