"""Paired comparisons over prompts: bootstrap confidence intervals and the sign test.

Runs are grouped by prompt (several seeds per prompt). Seeds of one prompt are not independent draws of the prompt
population, so every statistic here first averages the items of each prompt and then treats prompts as the unit:
the bootstrap resamples prompts with replacement, and the sign test counts prompts whose mean difference is positive.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Hashable, Sequence

import numpy as np

from .errors import UserError

RESAMPLES = 10_000
LEVEL = 0.95


@dataclass(frozen=True)
class Comparison:
    """Mean paired difference (per-prompt means averaged over prompts) with its bootstrap interval and sign test."""

    mean: float
    low: float
    high: float
    prompts: int
    positive: int  # prompts whose mean difference is > 0
    negative: int  # ... < 0 (the rest are ties)
    sign_p: float

    @property
    def significant(self) -> bool:
        """The interval excludes zero."""
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict:
        return {**asdict(self), "significant": self.significant}


def prompt_means(values: Sequence[float], groups: Sequence[Hashable]) -> np.ndarray:
    """Mean of ``values`` per group, in order of first appearance."""
    values = np.asarray(values, dtype=float)
    if len(values) != len(groups):
        raise UserError(f"{len(values)} values but {len(groups)} group labels")
    if not len(values):
        raise UserError("no values to compare")
    index: dict[Hashable, int] = {}
    codes = np.array([index.setdefault(g, len(index)) for g in groups])
    return np.bincount(codes, weights=values) / np.bincount(codes)


def bootstrap_means(per_prompt: np.ndarray, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """``resamples`` means of ``per_prompt`` resampled with replacement (the bootstrap distribution of the mean)."""
    per_prompt = np.asarray(per_prompt, dtype=float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(per_prompt), size=(resamples, len(per_prompt)))
    return per_prompt[picks].mean(axis=1)


def percentile_interval(per_prompt: np.ndarray, level: float = LEVEL, resamples: int = RESAMPLES,
                        seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``per_prompt``."""
    if not 0 < level < 1:
        raise UserError(f"confidence level must lie in (0, 1), got {level}")
    means = bootstrap_means(per_prompt, resamples, seed)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def sign_test(differences: Sequence[float]) -> float:
    """Two-sided exact sign test of "median difference = 0"; zero differences (ties) are left out.

    p = min(1, 2 * P(X <= min(k, n - k))) for X ~ Binomial(n, 1/2), n the non-zero differences and k the positive ones.
    """
    differences = np.asarray(differences, dtype=float)
    positive, negative = int((differences > 0).sum()), int((differences < 0).sum())
    n = positive + negative
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(positive, negative) + 1)) / 2**n
    return min(1.0, 2 * tail)


def compare(a: Sequence[float], b: Sequence[float], groups: Sequence[Hashable], level: float = LEVEL,
            resamples: int = RESAMPLES, seed: int = 0) -> Comparison:
    """Paired comparison of ``a - b`` (item i of ``a`` and of ``b`` are the same prompt and seed, prompt ``groups[i]``)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise UserError(f"paired comparison needs equal lengths, got {len(a)} and {len(b)}")
    per_prompt = prompt_means(a - b, groups)
    low, high = percentile_interval(per_prompt, level, resamples, seed)
    return Comparison(
        mean=float(per_prompt.mean()), low=low, high=high, prompts=len(per_prompt),
        positive=int((per_prompt > 0).sum()), negative=int((per_prompt < 0).sum()), sign_p=sign_test(per_prompt),
    )


def mean_interval(values: Sequence[float], groups: Sequence[Hashable], level: float = LEVEL,
                  resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean of per-prompt means and its bootstrap interval (e.g. for a curve's band)."""
    per_prompt = prompt_means(values, groups)
    return (float(per_prompt.mean()), *percentile_interval(per_prompt, level, resamples, seed))
