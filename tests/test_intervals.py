"""Paired bootstrap intervals and the sign test, against hand-worked cases and textbook results."""

import math

import numpy as np
import pytest

from noise_diffusion.errors import UserError
from noise_diffusion.intervals import (bootstrap_means, compare, mean_interval, percentile_interval, prompt_means,
                                       sign_test)


def test_sign_test_hand_worked():
    # 9 of 10 positive: p = 2 * (C(10,0) + C(10,1)) / 2^10 = 22 / 1024
    assert sign_test([1] * 9 + [-1]) == pytest.approx(22 / 1024)
    # 6 of 6 positive: p = 2 / 64
    assert sign_test([0.3] * 6) == pytest.approx(2 / 64)
    # ties are left out: (+, +, 0, -) -> n = 3, k = 2, p = 2 * (1 + 3) / 8 > 1 -> 1
    assert sign_test([1, 1, 0, -1]) == 1.0
    # 15 of 20 negative: p = 2 * sum_{i<=5} C(20, i) / 2^20 = 2 * 21700 / 1048576
    assert sign_test([-1] * 15 + [2] * 5) == pytest.approx(2 * 21700 / 2**20)
    assert sign_test([0, 0]) == 1.0


def test_prompt_means_groups_by_prompt_in_first_appearance_order():
    means = prompt_means([1, 3, 10, 20, 5], ["b", "b", "a", "a", "c"])
    assert means.tolist() == [2, 15, 5]
    with pytest.raises(UserError):
        prompt_means([1, 2], ["a"])


def test_bootstrap_distribution_of_two_prompts_is_the_hand_worked_one():
    # resampling two prompts with differences 0 and 1: means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4
    means = bootstrap_means(np.array([0.0, 1.0]), resamples=40_000, seed=3)
    for value, probability in ((0.0, 0.25), (0.5, 0.5), (1.0, 0.25)):
        assert np.mean(np.isclose(means, value)) == pytest.approx(probability, abs=0.01)
    assert percentile_interval(np.array([0.0, 1.0])) == (0.0, 1.0)


def test_bootstrap_variance_and_interval_match_the_normal_theory():
    rng = np.random.default_rng(0)
    values = rng.normal(0.2, 1.0, size=400)
    means = bootstrap_means(values, resamples=20_000, seed=1)
    # the variance of the bootstrap mean is the plug-in variance / n
    assert means.var() == pytest.approx(values.var() / len(values), rel=0.05)
    low, high = percentile_interval(values, resamples=20_000, seed=1)
    half_width = 1.959964 * values.std() / math.sqrt(len(values))
    assert low == pytest.approx(values.mean() - half_width, abs=0.1 * half_width)
    assert high == pytest.approx(values.mean() + half_width, abs=0.1 * half_width)


def test_compare_resamples_prompts_not_seeds():
    rng = np.random.default_rng(2)
    per_prompt = rng.normal(0.05, 0.1, size=30)
    a = np.repeat(per_prompt, 4)  # four seeds per prompt, identical differences
    groups = np.repeat(np.arange(30), 4)
    pooled = compare(a, np.zeros_like(a), groups)
    single = compare(per_prompt, np.zeros(30), np.arange(30))
    assert (pooled.low, pooled.high, pooled.mean) == pytest.approx((single.low, single.high, single.mean))
    assert pooled.prompts == 30
    assert pooled.positive + pooled.negative == 30
    assert pooled.sign_p == sign_test(per_prompt)
    # treating the 120 items as independent would give a narrower interval
    items = compare(a, np.zeros_like(a), np.arange(120))
    assert items.high - items.low < 0.7 * (pooled.high - pooled.low)


def test_compare_significance_and_direction():
    groups = np.arange(20)
    better = compare(np.full(20, 0.9) + np.linspace(0, 0.01, 20), np.full(20, 0.5), groups)
    assert better.significant and better.low > 0 and better.sign_p < 1e-5
    rng = np.random.default_rng(5)
    noise = rng.normal(0, 1, 200)
    null = compare(noise, noise[::-1], np.arange(200))
    assert null.low < 0 < null.high and not null.significant
    assert compare([1, 2], [1, 2], [0, 1]).as_dict()["significant"] is False
    with pytest.raises(UserError):
        compare([1, 2], [1], [0, 1])


def test_mean_interval_constant_values_collapse():
    assert mean_interval([0.4] * 12, [i // 3 for i in range(12)]) == pytest.approx((0.4, 0.4, 0.4))
