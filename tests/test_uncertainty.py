"""User-level bootstrap intervals and per-user averages (nextlocllm_hf.uncertainty)."""

import numpy as np
import pytest

from nextlocllm_hf.uncertainty import paired_difference_interval, per_user_mean, user_bootstrap_interval


def test_per_user_mean_weighs_every_user_once():
    # user a: 3 hits of 4 samples (0.75); user b: 0 of 1 -> per-user mean 0.375, pooled 3 / 5 = 0.6.
    values = np.array([1, 1, 1, 0, 0], dtype=float)
    users = np.array(["a", "a", "a", "a", "b"])
    assert per_user_mean(values, users) == pytest.approx(0.375)
    assert user_bootstrap_interval(values, users, n_resamples=200).estimate == pytest.approx(0.6)


def test_interval_contains_the_estimate_and_is_reproducible():
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(40), rng.integers(1, 30, 40))
    values = (rng.random(len(users)) < 0.3).astype(float)
    first = user_bootstrap_interval(values, users, seed=3)
    assert first.low < first.estimate < first.high
    assert first == user_bootstrap_interval(values, users, seed=3)


def test_a_heavy_user_widens_the_interval_beyond_the_sample_level_one():
    """One user with 500 samples at 90 % and 49 users with 10 samples at 10 %: the pooled score hinges on that user."""
    users = np.concatenate([np.zeros(500, dtype=int), np.repeat(np.arange(1, 50), 10)])
    values = np.concatenate([np.tile([1.0] * 9 + [0.0], 50), np.tile([1.0] + [0.0] * 9, 49)])
    interval = user_bootstrap_interval(values, users, n_resamples=1000)
    p = values.mean()
    sample_level_width = 2 * 1.96 * np.sqrt(p * (1 - p) / len(values))
    assert interval.high - interval.low > 3 * sample_level_width


def test_paired_difference_of_a_method_with_itself_is_zero():
    rng = np.random.default_rng(2)
    users = np.repeat(np.arange(20), 5)
    values = (rng.random(100) < 0.5).astype(float)
    interval = paired_difference_interval(values, values, users, n_resamples=200)
    assert interval.estimate == interval.low == interval.high == 0.0


def test_paired_difference_sign_and_estimate():
    users = np.repeat(np.arange(30), 4)
    better = np.ones(120)
    worse = np.tile([1.0, 0.0, 0.0, 0.0], 30)
    interval = paired_difference_interval(better, worse, users, n_resamples=200)
    assert interval.estimate == pytest.approx(0.75)
    assert interval.low == pytest.approx(0.75) and interval.high == pytest.approx(0.75)


@pytest.mark.parametrize(
    "values, users, message",
    [
        (np.ones(3), np.array(["a", "b"]), "3 values but 2 user ids"),
        (np.array([1.0, np.nan]), np.array(["a", "b"]), "NaN"),
        (np.ones(3), np.array(["a", "a", "a"]), "at least 2 users"),
    ],
)
def test_bad_input_is_named(values, users, message):
    with pytest.raises(ValueError, match=message):
        user_bootstrap_interval(values, users, n_resamples=50)
