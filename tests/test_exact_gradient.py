"""Exact gradients through every denoiser call (``generator.exact``) against central finite differences of diffusers'
own sampler output, in float64 on tiny pipelines of every scheduler the families use.

The reference is the finite difference of a fixed functional of the sampler's final latent (or of the decoded image),
computed from plain sampling passes: no autograd of the code under test. The replay gradient (predictions held fixed)
fails the same comparison, so the test can tell the two apart.
"""

import pytest
import torch

from noise_diffusion.generators import load_generator
from noise_diffusion.generators.base import initial_latents
from noise_diffusion.generators.exact import gradient_agreement, scored_gradients
from noise_diffusion.testing.families import build_tiny_flux_pipeline, build_tiny_sd3_pipeline, build_tiny_sdxl_pipeline
from noise_diffusion.testing.families import build_tiny_turbo_pipeline

PROMPTS = ["a red cat", "a dog on a bench"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_sd_dir):
    root = tmp_path_factory.mktemp("exact")
    return {
        "sd": tiny_sd_dir,
        "sd-turbo": str(build_tiny_turbo_pipeline(root / "sd_turbo", "sd-turbo")),
        "sdxl": str(build_tiny_sdxl_pipeline(root / "sdxl")),
        "flux": str(build_tiny_flux_pipeline(root / "flux", variant="schnell")),
        "sd3": str(build_tiny_sd3_pipeline(root / "sd3")),
    }


def _double(folders, family, **options):
    generator = load_generator(folders[family], "cpu", torch.float64, **options)
    assert generator.dtype == torch.float64
    return generator


def _functional(generator, on_image: bool):
    """A fixed random linear functional of the final latents or of the decoded images (summed over the batch)."""
    shape = (len(PROMPTS), 3, generator.height, generator.width) if on_image else (len(PROMPTS), *generator.latent_shape)
    weights = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return lambda latents: ((generator.decode(latents) if on_image else latents) * weights).sum()


def _gradients(generator, conditioning, z, score, checkpointing=True):
    exact_pass = generator.exact(z, conditioning, checkpointing=checkpointing)
    final = exact_pass.latents.detach().requires_grad_(True)
    (at_final,) = torch.autograd.grad(score(final), final)
    exact, replay = exact_pass.gradients(at_final)
    return exact_pass, exact, replay


def _finite_difference(generator, conditioning, z, score, direction, step):
    with torch.no_grad():
        plus = score(generator.sample(z + step * direction, conditioning).latents)
        minus = score(generator.sample(z - step * direction, conditioning).latents)
    return float((plus - minus) / (2 * step))


# DDIM and PNDM run in float64 throughout (step 1e-3, agreement to ~1e-8). Euler and flow-matching Euler cast the
# latent to float32 inside every step, so their finite differences carry float32 rounding / step: a larger step
# (0.2 along a unit direction, ~0.004 per element) keeps both it and the truncation error near 1e-5.
CASES = {
    "sd-ddim-cfg": ("sd", dict(scheduler="ddim", num_steps=3, guidance_scale=7.5), True, 1e-3, 1e-6),
    "sd-pndm-cfg": ("sd", dict(scheduler="default", num_steps=2, guidance_scale=7.5), False, 1e-3, 1e-6),
    "sd-turbo-euler-1-step": ("sd-turbo", dict(scheduler="default", num_steps=1, guidance_scale=0.0), False, 0.2, 1e-3),
    "sdxl-euler-cfg": ("sdxl", dict(scheduler="default", num_steps=2, guidance_scale=5.0), False, 0.2, 1e-3),
    "flux-schnell-flow-euler": ("flux", dict(num_steps=3), False, 0.2, 1e-3),
    "sd3-flow-euler-cfg": ("sd3", dict(num_steps=2, guidance_scale=7.0), False, 0.2, 1e-3),
}


@pytest.mark.parametrize("case", CASES)
def test_exact_gradient_matches_finite_differences(folders, case):
    family, options, on_image, step, tolerance = CASES[case]
    generator = _double(folders, family, **options)
    conditioning = generator.encode_prompts(PROMPTS)
    z = initial_latents(generator.latent_shape, [3, 5]).double()
    score = _functional(generator, on_image)
    _, exact, replay = _gradients(generator, conditioning, z, score)
    exact_errors, replay_errors = [], []
    for k in range(2):
        direction = torch.randn(z.shape, generator=torch.Generator().manual_seed(10 + k), dtype=torch.float64)
        direction /= direction.norm()
        reference = _finite_difference(generator, conditioning, z, score, direction, step)
        exact_errors.append(abs(float((exact * direction).sum()) - reference) / abs(reference))
        replay_errors.append(abs(float((replay * direction).sum()) - reference) / abs(reference))
    assert max(exact_errors) < tolerance, exact_errors
    assert max(replay_errors) > 0.05, replay_errors  # the replay is a different, approximate gradient


@pytest.mark.parametrize("family, options", [("sd", dict(scheduler="default", num_steps=3, guidance_scale=7.5)),
                                             ("flux", dict(num_steps=3))])
def test_checkpointing_gives_the_same_gradient_and_saves_memory(folders, family, options):
    generator = load_generator(folders[family], "cpu", torch.float32, **options)
    conditioning = generator.encode_prompts(PROMPTS)
    z = initial_latents(generator.latent_shape, [3, 5])
    score = _functional(generator, on_image=False)
    saved, gradients = {}, {}
    for checkpointing in (True, False):
        total = [0]

        def pack(tensor):
            total[0] += tensor.numel() * tensor.element_size()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            exact_pass = generator.exact(z, conditioning, checkpointing=checkpointing)
        saved[checkpointing] = total[0]
        final = exact_pass.latents.detach().requires_grad_(True)
        gradients[checkpointing] = exact_pass.gradients(torch.autograd.grad(score(final), final)[0])[0]
    torch.testing.assert_close(gradients[True], gradients[False], rtol=1e-6, atol=1e-9)
    latent_bytes = z.numel() * z.element_size()
    calls = len(exact_pass.record)
    # checkpointed: about one latent per network call is kept; without: every call's activations
    assert saved[True] <= 2 * calls * latent_bytes < saved[False] / 20


@pytest.mark.parametrize("scheduler, calls", [("ddim", 4), ("default", 5)])  # PNDM: one extra call
def test_pass_reproduces_sampling_and_counts_backwards(folders, scheduler, calls):
    generator = load_generator(folders["sd"], scheduler=scheduler, num_steps=4, guidance_scale=7.5)
    conditioning = generator.encode_prompts(PROMPTS)
    z = initial_latents(generator.latent_shape, [3, 5])
    sampled = generator.sample(z, conditioning)
    exact_pass = generator.exact(z, conditioning)
    assert torch.equal(exact_pass.latents.detach(), sampled.latents)
    assert all(torch.equal(a, b) for a, b in zip(exact_pass.record, sampled.record)) and len(sampled.record) == calls
    assert exact_pass.model_evals == generator.model_evals_per_generation == 2 * calls  # both guidance halves
    assert exact_pass.model_backwards == 0
    score = _functional(generator, on_image=True)
    final = exact_pass.latents.detach().requires_grad_(True)
    at_final = torch.autograd.grad(score(final), final)[0]
    _, replay = exact_pass.gradients(at_final)
    assert exact_pass.model_backwards == 2 * calls
    # the replay gradient beside it is the one the loop's replay path gives
    leaf = z.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(score(generator.replay(leaf, sampled.record)), leaf)
    torch.testing.assert_close(replay, expected, rtol=1e-5, atol=1e-8)


def test_scored_gradients_for_the_loop(folders):
    """The loop's one call: scores and images of the sampler's latents, and both gradients of the scores."""
    generator = load_generator(folders["sd"], scheduler="ddim", num_steps=3, guidance_scale=7.5)
    conditioning = generator.encode_prompts(PROMPTS)
    z = initial_latents(generator.latent_shape, [3, 5])
    weights = torch.randn(len(PROMPTS), 3, generator.height, generator.width, generator=torch.Generator().manual_seed(1))
    objective = lambda images: (images * weights).flatten(1).sum(1)  # noqa: E731  per-item scores
    result = scored_gradients(generator, z, conditioning, objective)
    sampled = generator.sample(z, conditioning)
    with torch.no_grad():
        torch.testing.assert_close(result.scores, objective(generator.decode(sampled.latents)))
    leaf = z.clone().requires_grad_(True)
    (replay,) = torch.autograd.grad(objective(generator.decode(generator.replay(leaf, sampled.record))).sum(), leaf)
    torch.testing.assert_close(result.replay, replay, rtol=1e-5, atol=1e-8)
    exact_pass = generator.exact(z, conditioning, checkpointing=False)
    (exact,) = torch.autograd.grad(objective(generator.decode(exact_pass.latents)).sum(), exact_pass.z)
    torch.testing.assert_close(result.exact, exact, rtol=1e-5, atol=1e-8)
    assert result.exact_pass.model_backwards == result.exact_pass.model_evals == 6


def test_checkpointing_by_default_only_with_more_than_one_call(folders):
    turbo = load_generator(folders["sd-turbo"], scheduler="default", num_steps=1, guidance_scale=0.0)
    z = initial_latents(turbo.latent_shape, [3])
    assert not turbo.exact(z, turbo.encode_prompts(PROMPTS[:1])).checkpointed  # one call: nothing to save
    two_steps = load_generator(folders["sd-turbo"], scheduler="default", num_steps=2, guidance_scale=0.0)
    assert two_steps.exact(z, two_steps.encode_prompts(PROMPTS[:1])).checkpointed
    assert not two_steps.exact(z, two_steps.encode_prompts(PROMPTS[:1]), checkpointing=False).checkpointed


def test_gradient_agreement_by_hand():
    exact = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    replay = torch.tensor([[8.0, 6.0], [0.0, 2.0]])
    agreement = gradient_agreement(exact, replay)
    assert agreement.cosine == pytest.approx([24 / 25, 0.0])  # (3*8 + 4*6) / (5 * 10)
    assert agreement.norm_ratio == pytest.approx([0.5, 0.5])
