"""Batched Noise Diffusion gives each item the result it would get alone.

``optimize`` runs B items (different prompts, different seeds) through one batched generation, replay, decode and
scoring per epoch, but every item keeps its own RNG, γ, candidate selection, acceptance, best image and early stop.
These tests run each item alone as the independent reference and compare: the discrete decisions (chosen candidate,
acceptance, best epoch, stopping epoch) must be identical, and the real-valued results equal within a tight tolerance.

Tolerance: CPU convolutions and matrix products may pick different kernels / blockings for a different batch size, so
results can differ in the last bits (observed: scores within 6e-8, images within 1.4e-6 on the tiny pipeline). We allow
SCORE_TOL = 1e-6 on scores, γ and alignments (relative 1e-5 for alignments, whose scale is arbitrary), and 1e-5 on
latents and image pixels; a real batching bug (an item reading a batch-mate's gradient, pool, prompt or score) moves them
by orders of magnitude more.
"""

import math

import pytest
import torch

from noise_diffusion import SearchConfig, optimize
from noise_diffusion.generators import load_generator
from noise_diffusion.verifiers import load_verifier

STEPS = 4
CANDIDATES = 16
EPOCHS = 4
SCORE_TOL = 1e-6
TENSOR_TOL = 1e-5
# same prompt with different seeds, same seed with different prompts, and a third prompt
PROMPTS = ["a cat", "a dog on a bench", "a cat", "two red birds"]
SEEDS = [3, 11, 11, 29]


@pytest.fixture(scope="module")
def generator(tiny_sd_dir):
    return load_generator(tiny_sd_dir, num_steps=STEPS, guidance_scale=7.5)


@pytest.fixture(scope="module")
def verifier(tiny_clip_dir):
    return load_verifier(tiny_clip_dir, mapping="affine")


def batched(generator, verifier, config):
    return optimize(generator, verifier, PROMPTS, SEEDS, config, progress=False)


def alone(generator, verifier, config):
    return [optimize(generator, verifier, [p], [s], config, progress=False)[0] for p, s in zip(PROMPTS, SEEDS)]


def assert_same_run(got, want):
    """``got`` (from the batch) equals ``want`` (the item alone): decisions exactly, numbers within tolerance."""
    assert (got.prompt, got.seed) == (want.prompt, want.seed)
    assert [r["epoch"] for r in got.epochs] == [r["epoch"] for r in want.epochs]
    for a, b in zip(got.epochs, want.epochs):
        assert a.get("candidate") == b.get("candidate"), f"epoch {a['epoch']}: chose a different candidate noise"
        assert a["accepted"] == b["accepted"], f"epoch {a['epoch']}: different acceptance"
        assert a["score"] == pytest.approx(b["score"], abs=SCORE_TOL)
        for key, rel in (("gamma", 0), ("alignment", 1e-5), ("gradient_norm", 1e-5), ("gradient_cosine", 1e-5),
                         ("gradient_norm_ratio", 1e-5), ("kl", 1e-5)):
            assert (key in a) == (key in b)
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=rel, abs=SCORE_TOL), f"epoch {a['epoch']}: {key}"
    assert got.best_epoch == want.best_epoch
    assert got.best_score == pytest.approx(want.best_score, abs=SCORE_TOL)
    assert got.initial_score == pytest.approx(want.initial_score, abs=SCORE_TOL)
    torch.testing.assert_close(got.best_latent, want.best_latent, rtol=0, atol=TENSOR_TOL)
    torch.testing.assert_close(got.best_image, want.best_image, rtol=0, atol=TENSOR_TOL)
    torch.testing.assert_close(got.initial_image, want.initial_image, rtol=0, atol=TENSOR_TOL)
    assert got.compute == want.compute


def running_best(result) -> list[float]:
    scores = [r["score"] for r in result.epochs]
    return [max(scores[: k + 1]) for k in range(len(scores))]


def test_batch_equals_items_alone(generator, verifier):
    config = SearchConfig(max_epoch=EPOCHS, num_candidates=CANDIDATES)
    got, want = batched(generator, verifier, config), alone(generator, verifier, config)
    for g, w in zip(got, want):
        assert_same_run(g, w)
        assert len(w.epochs) == EPOCHS + 1
    # the items really differ (otherwise equality would prove nothing about per-item state)
    assert len({tuple(r.get("candidate") for r in w.epochs) for w in want}) == len(want)
    assert len({round(w.initial_score, 6) for w in want}) == len(want)


def test_early_stop_items_leave_at_different_epochs(generator, verifier):
    """With --target_score the batch shrinks as items finish; the others must not notice."""
    free = alone(generator, verifier, SearchConfig(max_epoch=EPOCHS, num_candidates=CANDIDATES))
    trajectories = [running_best(r) for r in free]

    def stop_epochs(target):  # independent expectation: the first epoch whose best-so-far reaches the target
        return [next((k for k, b in enumerate(t) if b >= target), EPOCHS) for t in trajectories]

    # a target well clear of every score (so rounding cannot flip a decision) that makes items stop at different epochs
    values = sorted({b for t in trajectories for b in t})
    targets = [(lo + hi) / 2 for lo, hi in zip(values, values[1:]) if hi - lo > 1e-4]
    target = max(targets, key=lambda t: (len(set(stop_epochs(t))), -abs(sum(stop_epochs(t)) / len(free) - EPOCHS / 2)))
    expected = stop_epochs(target)
    assert len(set(expected)) >= 2, "no target separates the items; change the seeds"

    config = SearchConfig(max_epoch=EPOCHS, num_candidates=CANDIDATES, target_score=target)
    got, want = batched(generator, verifier, config), alone(generator, verifier, config)
    for g, w, stop, f in zip(got, want, expected, free):
        assert_same_run(g, w)
        assert w.epochs[-1]["epoch"] == stop
        # a run with a target is a prefix of the run without one
        assert [r["score"] for r in w.epochs] == pytest.approx([r["score"] for r in f.epochs[: stop + 1]], abs=SCORE_TOL)


def test_accept_improved(generator, verifier):
    config = SearchConfig(max_epoch=EPOCHS, num_candidates=CANDIDATES, accept="improved")
    got, want = batched(generator, verifier, config), alone(generator, verifier, config)
    rejected = 0
    for g, w in zip(got, want):
        assert_same_run(g, w)
        # independent check of the rule: γ of every epoch comes from the last *accepted* score
        current = w.epochs[0]["score"]
        for record in w.epochs[1:]:
            assert record["gamma"] == pytest.approx(1 - math.sqrt(current), abs=SCORE_TOL)
            assert record["accepted"] == (record["score"] > current)
            if record["accepted"]:
                current = record["score"]
            else:
                rejected += 1
    assert rejected > 0, "no update was rejected: the test would not exercise the revert path"


@pytest.mark.parametrize("method", ["random_diffusion", "gradient_ascent", "zero_order", "reno", "mean_variance"])
def test_other_methods_batch_equals_alone(generator, verifier, method):
    candidates = 3 if method == "zero_order" else CANDIDATES  # zero_order: generations per epoch
    config = SearchConfig(method=method, max_epoch=2, num_candidates=candidates)
    for g, w in zip(batched(generator, verifier, config), alone(generator, verifier, config)):
        assert_same_run(g, w)


def test_exact_gradient_batch_equals_alone(generator, verifier):
    config = SearchConfig(gradient="exact", max_epoch=2, num_candidates=CANDIDATES)
    for g, w in zip(batched(generator, verifier, config), alone(generator, verifier, config)):
        assert_same_run(g, w)


def test_pndm_scheduler_batch_equals_alone(tiny_sd_dir, verifier):
    """The checkpoint's own PNDM scheduler keeps state within a pass; batching must not mix it between items."""
    generator = load_generator(tiny_sd_dir, num_steps=STEPS, guidance_scale=7.5, scheduler="default")
    config = SearchConfig(max_epoch=2, num_candidates=CANDIDATES)
    for g, w in zip(batched(generator, verifier, config), alone(generator, verifier, config)):
        assert_same_run(g, w)
