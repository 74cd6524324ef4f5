"""``SearchConfig.gradient = "exact"`` in the epoch loop: the loop's step uses the gradient that
:func:`~noise_diffusion.generators.exact.scored_gradients` gives when called directly (itself tested against finite
differences in test_exact_gradient.py), counts the denoiser backwards, and records the exact–replay agreement; the
replay default records none of it."""

import pytest
import torch

from noise_diffusion import SearchConfig, optimize
from noise_diffusion.errors import UserError
from noise_diffusion.generators import load_generator
from noise_diffusion.generators.base import initial_latents
from noise_diffusion.generators.exact import gradient_agreement, scored_gradients

from helpers import calibrated_redness

STEPS = 4
PROMPT = "a red apple"


@pytest.fixture(scope="module")
def generator(tiny_sd_dir):
    return load_generator(tiny_sd_dir, num_steps=STEPS, guidance_scale=7.5)


@pytest.fixture(scope="module")
def verifier(generator):
    return calibrated_redness(generator, PROMPT)


def run(generator, verifier, seeds, on_epoch=None, **config):
    return optimize(generator, verifier, [PROMPT] * len(seeds), list(seeds), SearchConfig(**config),
                    progress=False, on_epoch=on_epoch)


def test_loop_steps_along_the_exact_gradient(generator, verifier):
    """gradient_ascent's first step, z1 = z0 + η·sqrt(D)·g/‖g‖, made with g from scored_gradients directly: the
    loop's epoch-1 image is the image of that z1."""
    images = {}
    (result,) = run(generator, verifier, [3], on_epoch=lambda i, e, image, r: images.__setitem__(e, image),
                    method="gradient_ascent", gradient="exact", max_epoch=1)
    z0 = initial_latents(generator.latent_shape, [3])
    conditioning = generator.encode_prompts([PROMPT])
    direct = scored_gradients(generator, z0, conditioning, lambda x: verifier(x, [PROMPT]))
    g = direct.exact
    z1 = z0 + 0.1 * g.numel() ** 0.5 * g / g.norm()
    with torch.no_grad():
        want = generator.decode(generator.sample(z1, conditioning).latents)[0]
    torch.testing.assert_close(images[1], want, rtol=0, atol=1e-5)
    assert result.epochs[1]["gradient_norm"] == pytest.approx(float(g.norm()), rel=1e-5)
    agreement = gradient_agreement(direct.exact, direct.replay)
    assert result.epochs[0]["gradient_cosine"] == pytest.approx(agreement.cosine[0], abs=1e-6)
    assert result.epochs[0]["gradient_norm_ratio"] == pytest.approx(agreement.norm_ratio[0], rel=1e-5)
    # the exact gradient is not the replay one on this pipeline, so the test tells them apart
    assert agreement.cosine[0] < 0.9999


def test_exact_counts_backwards_and_records_agreement(generator, verifier):
    epochs = 2
    (result,) = run(generator, verifier, [5], method="noise_diffusion", gradient="exact", max_epoch=epochs,
                    num_candidates=4)
    evals = 2 * STEPS  # both guidance halves per step
    assert result.compute.generations == epochs + 1
    assert result.compute.model_evals == (epochs + 1) * evals
    assert result.compute.model_backwards == epochs * evals  # no gradient after the last generation
    for record in result.epochs[:-1]:
        assert -1.0 <= record["gradient_cosine"] <= 1.0 and record["gradient_norm_ratio"] > 0
    assert "gradient_cosine" not in result.epochs[-1].info
    assert result.search.record()["gradient"] == "exact"


def test_replay_default_records_no_agreement_and_no_backwards(generator, verifier):
    (result,) = run(generator, verifier, [5], max_epoch=2, num_candidates=4)
    assert result.compute.model_backwards == 0
    assert all("gradient_cosine" not in e.info for e in result.epochs)
    assert result.search.record()["gradient"] == "replay"


def test_unknown_gradient_is_a_user_error():
    with pytest.raises(UserError, match="gradient"):
        SearchConfig(gradient="finite").validate()
