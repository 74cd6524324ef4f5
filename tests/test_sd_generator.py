"""The SD1.x generator: replay reproduces sampling, the replay gradient is the scaled final-latent gradient."""

import torch

from noise_diffusion.generators import load_generator
from noise_diffusion.generators.base import initial_latents

from helpers import RednessVerifier


def test_ddim_never_clips_even_from_a_pndm_checkpoint(tiny_sd_dir):
    generator = load_generator(tiny_sd_dir, scheduler="ddim", num_steps=5)
    assert type(generator.pipe.scheduler).__name__ == "PNDMScheduler"  # the checkpoint's own
    assert generator.scheduler_class.__name__ == "DDIMScheduler"
    assert generator.scheduler_config["clip_sample"] is False


def _replay_matches(tiny_sd_dir, scheduler):
    generator = load_generator(tiny_sd_dir, scheduler=scheduler, num_steps=8, guidance_scale=7.5)
    z = initial_latents(generator.latent_shape, [1, 2])
    sampled = generator.sample(z, generator.encode_prompts(["a cat", "a red dog"]))
    replayed = generator.replay(z, sampled.record)
    assert torch.equal(replayed, sampled.latents)
    return generator, sampled


def test_replay_reproduces_ddim_sampling_exactly(tiny_sd_dir):
    generator, sampled = _replay_matches(tiny_sd_dir, "ddim")
    assert len(sampled.record) == 8
    assert generator.model_evals_per_generation == 16


def test_replay_reproduces_pndm_sampling_exactly(tiny_sd_dir):
    generator, sampled = _replay_matches(tiny_sd_dir, "default")
    # PNDM with skip_prk_steps makes one extra model call: N + 1 steps
    assert len(sampled.record) == 9
    assert generator.model_evals_per_generation == 18


def test_sampling_matches_the_diffusers_pipeline(tiny_sd_dir):
    """Our guided DDIM loop against diffusers' own pipeline call with the same latents and scheduler."""
    from diffusers import DDIMScheduler

    generator = load_generator(tiny_sd_dir, scheduler="ddim", num_steps=6, guidance_scale=5.0)
    pipe = generator.pipe
    original = pipe.scheduler
    pipe.scheduler = DDIMScheduler.from_config(generator.scheduler_config)
    try:
        z = initial_latents(generator.latent_shape, [4])
        ours = generator.sample(z, generator.encode_prompts(["a blue bird"])).latents
        theirs = pipe(
            "a blue bird", num_inference_steps=6, guidance_scale=5.0, latents=z.clone(), output_type="latent",
            negative_prompt="",
        ).images
    finally:
        pipe.scheduler = original
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_replay_gradient_is_scaled_final_latent_gradient(tiny_sd_dir):
    """DDIM η=0 with ε fixed is affine in z with coefficient sqrt(ᾱ_final / ᾱ_first) (13.15 for SD1.x, 50 steps)."""
    steps = 50
    generator = load_generator(tiny_sd_dir, scheduler="ddim", num_steps=steps)
    verifier = RednessVerifier()
    z = initial_latents(generator.latent_shape, [7])
    sampled = generator.sample(z, generator.encode_prompts(["a red apple"]))

    leaf = z.clone().requires_grad_(True)
    verifier(generator.decode(generator.replay(leaf, sampled.record)), ["x"]).sum().backward()
    final = sampled.latents.clone().requires_grad_(True)
    verifier(generator.decode(final), ["x"]).sum().backward()

    # independent computation of the coefficient from the schedule itself
    scheduler = generator.scheduler_class.from_config(generator.scheduler_config)
    scheduler.set_timesteps(steps)
    alphas = scheduler.alphas_cumprod
    first = int(scheduler.timesteps[0])
    final_alpha = alphas[0]  # set_alpha_to_one=False: the last step lands on ᾱ_0
    coefficient = float((final_alpha / alphas[first]).sqrt())
    assert 13.0 < coefficient < 13.3  # sqrt(ᾱ_0 / ᾱ_first): the DDIM chain's gain for SD1.x's betas at 50 steps
    assert torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0
    torch.testing.assert_close(leaf.grad, coefficient * final.grad, rtol=1e-3, atol=1e-7)


def test_decode_range_and_shape(tiny_sd_dir):
    generator = load_generator(tiny_sd_dir, num_steps=3)
    z = initial_latents(generator.latent_shape, [0, 1, 2])
    images = generator.decode(generator.sample(z, generator.encode_prompts(["a", "b", "c"])).latents)
    assert images.shape == (3, 3, generator.height, generator.width)
    assert images.min() >= 0 and images.max() <= 1


def test_initial_latents_depend_only_on_seed():
    a = initial_latents((4, 8, 8), [3, 9])
    b = initial_latents((4, 8, 8), [9])
    assert torch.equal(a[1], b[0])
    assert not torch.equal(a[0], a[1])


def test_memory_options_keep_images_and_gradients(tiny_sd_dir):
    """VAE slicing and checkpointing change memory use, not results."""
    plain = load_generator(tiny_sd_dir, num_steps=3)
    lean = load_generator(tiny_sd_dir, num_steps=3, vae_slicing=True, vae_checkpointing=True)
    assert lean.settings()["vae_slicing"] and lean.settings()["vae_checkpointing"]
    z = initial_latents(plain.latent_shape, [1, 2])
    latents = plain.sample(z, plain.encode_prompts(["a", "b"])).latents
    grads = []
    for generator in (plain, lean):
        leaf = latents.clone().requires_grad_(True)
        images = generator.decode(leaf)
        images[:, 0].mean().backward()
        grads.append((images.detach(), leaf.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-7)
