"""benchmarks/noise_search_toy.py: its prompts are the toy replication's, and a budget keeps the best-guided image
among the generations it buys (hand-worked cases)."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import noise_search_toy  # noqa: E402
import replicate_toy  # noqa: E402
from noise_diffusion.toy import world  # noqa: E402


def test_prompts_are_the_replications_first_held_out_and_seen_prompts():
    """The benchmark draws its 24 prompts with the replication's rule: the replication's first 12 held-out and first
    12 seen prompts."""
    (sample,) = replicate_toy.choose_prompt_samples(40, samples=1)
    held, seen = [p for p in sample if world.is_held_out_prompt(p)], [p for p in sample if not world.is_held_out_prompt(p)]
    assert noise_search_toy.choose_prompt_samples is replicate_toy.choose_prompt_samples
    assert replicate_toy.choose_prompt_samples(24, samples=1)[0] == held[:12] + seen[:12]


def _result():
    return {"guide": np.array([[0.1, 0.5, 0.3], [0.9, 0.2, 0.95]]), "held": np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]),
            "generations": np.array([1, 2, 3]), "forwards": np.array([1, 4, 7]), "cpu_per_generation": 1.0}


def test_budget_keeps_the_best_guided_image_it_can_afford():
    scores, generations = noise_search_toy.kept(_result(), 2, "generations")
    assert generations == 2 and scores.tolist() == [2.0, 4.0]  # item 2: 0.9 at generation 1 beats 0.2
    scores, generations = noise_search_toy.kept(_result(), 6, "forwards")  # 4 <= 6 < 7
    assert generations == 2 and scores.tolist() == [2.0, 4.0]
    scores, generations = noise_search_toy.kept(_result(), 7, "forwards")
    assert generations == 3 and scores.tolist() == [2.0, 6.0]
    scores, generations = noise_search_toy.kept(_result(), 0.5, "cpu")  # the first image is always there
    assert generations == 1 and scores.tolist() == [1.0, 4.0]


def test_budget_beyond_the_run_is_refused():
    assert noise_search_toy.kept(_result(), 10, "forwards") is None  # 7 + 3 more would still fit
    assert noise_search_toy.kept(_result(), 0, "generations") is None
