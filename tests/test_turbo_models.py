"""SD-Turbo and SDXL-Turbo: short names, their own recommended settings, and sampling with their published scheduler
configs on tiny pipelines (no network) against diffusers' own pipeline call."""

import pytest
import torch

from noise_diffusion.cli import family_defaults
from noise_diffusion.errors import UserError
from noise_diffusion.generators import GENERATORS, load_generator, resolve_model
from noise_diffusion.generators import sampling_defaults
from noise_diffusion.generators.base import initial_latents
from noise_diffusion.testing.families import build_tiny_turbo_pipeline

HUB_IDS = {"sd-turbo": "stabilityai/sd-turbo", "sdxl-turbo": "stabilityai/sdxl-turbo"}
FAMILIES = {"sd-turbo": "StableDiffusionPipeline", "sdxl-turbo": "StableDiffusionXLPipeline"}
SCHEDULERS = {"sd-turbo": "EulerDiscreteScheduler", "sdxl-turbo": "EulerAncestralDiscreteScheduler"}
PROMPTS = ["a red cat", "a dog on a bench"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("turbo")
    return {kind: str(build_tiny_turbo_pipeline(root / kind, kind)) for kind in HUB_IDS}


@pytest.fixture
def as_turbo(folders, monkeypatch):
    """Give each tiny folder the recommended settings of the turbo checkpoint whose scheduler config it carries."""
    for kind, folder in folders.items():
        cls = GENERATORS[FAMILIES[kind]]
        monkeypatch.setitem(cls.CHECKPOINT_SAMPLING, folder, cls.CHECKPOINT_SAMPLING[HUB_IDS[kind]])
    return folders


@pytest.mark.parametrize("kind", HUB_IDS)
def test_short_names_and_their_recommended_settings(kind):
    assert resolve_model(kind) == HUB_IDS[kind]
    cls = GENERATORS[FAMILIES[kind]]
    # the model cards: 1 step, guidance 0 (no classifier-free guidance), 512x512, the checkpoint's own scheduler
    assert sampling_defaults(HUB_IDS[kind], cls) == dict(num_steps=1, guidance_scale=0.0, height=512, width=512,
                                                          scheduler="default")
    assert cls.recommended()[kind].num_steps == 1
    # the family's own defaults are unchanged for its other checkpoints
    assert sampling_defaults("CompVis/stable-diffusion-v1-4", GENERATORS["StableDiffusionPipeline"])["num_steps"] == 50


def _help_value(field: str, label: str) -> str:
    """The value the help gives ``label`` in ``family_defaults(field)`` ("labels: value; labels: value")."""
    for group in family_defaults(field).split("; "):
        labels, value = group.rsplit(": ", 1) if field not in ("height", "width") else group.split(": ", 1)
        if label in labels.split(", "):
            return value
    raise AssertionError(f"{label} not in the help of {field}")


def test_help_lists_the_turbo_settings():
    for kind in HUB_IDS:
        assert (_help_value("num_steps", kind), _help_value("guidance_scale", kind)) == ("1", "0")
        assert _help_value("height", kind) == "512"
    assert _help_value("height", "SD1.x/2.x") == "the checkpoint's native size (512 for SD1.4)"


def _diffusers_images(generator, z, seed):
    """Diffusers' own pipeline call with the checkpoint's scheduler and the same latents (it scales them by
    ``init_noise_sigma`` itself, as the generator does)."""
    return generator.pipe(
        prompt=PROMPTS, num_inference_steps=generator.num_steps, guidance_scale=generator.guidance_scale,
        height=generator.height, width=generator.width, latents=z.clone(), output_type="pt",
        generator=torch.Generator().manual_seed(seed),
    ).images


@pytest.mark.parametrize("kind", HUB_IDS)
def test_turbo_samples_one_euler_step_without_guidance_like_diffusers(as_turbo, kind):
    generator = load_generator(as_turbo[kind])
    assert (generator.num_steps, generator.guidance_scale, generator.do_cfg) == (1, 0.0, False)
    assert generator.scheduler_class.__name__ == SCHEDULERS[kind]
    assert generator.model_evals_per_generation == 1
    scheduler = generator.fresh_scheduler()
    assert scheduler.timesteps.tolist() == [999]  # "trailing" spacing: the single step starts at t = 999
    # sigma_max = sqrt((1 - alpha_bar) / alpha_bar) at t = 999, from SD's scaled-linear betas
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alpha_bar = torch.cumprod(1 - betas, 0)[999]
    assert float(scheduler.init_noise_sigma) == pytest.approx(float(((1 - alpha_bar) / alpha_bar).sqrt()), rel=1e-5)
    assert float(scheduler.init_noise_sigma) == pytest.approx(14.6146, abs=1e-3)
    z = initial_latents(generator.latent_shape, [1, 2])
    sampled = generator.sample(z, generator.encode_prompts(PROMPTS))
    ours = generator.decode(sampled.latents)
    torch.testing.assert_close(ours, _diffusers_images(generator, z, seed=0), rtol=1e-4, atol=1e-5)
    # one ancestral step adds no noise: the pipeline's noise generator does not matter, and the replay is exact
    torch.testing.assert_close(ours, _diffusers_images(generator, z, seed=1), rtol=1e-4, atol=1e-5)
    assert torch.equal(generator.replay(z, sampled.record), sampled.latents)


def test_sdxl_turbo_refuses_noisy_ancestral_steps_and_takes_ddim(as_turbo):
    with pytest.raises(UserError, match="EulerAncestralDiscreteScheduler adds noise at every step but the last"):
        load_generator(as_turbo["sdxl-turbo"], num_steps=2)
    generator = load_generator(as_turbo["sdxl-turbo"], num_steps=2, scheduler="ddim")
    assert generator.scheduler_class.__name__ == "DDIMScheduler"
    assert generator.fresh_scheduler().timesteps.tolist() == [999, 499]  # the checkpoint's "trailing" spacing kept


def test_sd_turbo_with_guidance_runs_both_halves(as_turbo):
    generator = load_generator(as_turbo["sd-turbo"], guidance_scale=2.0, num_steps=2)
    assert generator.do_cfg and generator.model_evals_per_generation == 4
    z = initial_latents(generator.latent_shape, [1, 2])
    ours = generator.decode(generator.sample(z, generator.encode_prompts(PROMPTS)).latents)
    theirs = generator.pipe(prompt=PROMPTS, num_inference_steps=2, guidance_scale=2.0, negative_prompt=[""] * len(PROMPTS),
                            latents=z.clone(), output_type="pt").images
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", HUB_IDS)
def test_command_line_without_scheduler_flag_gets_the_turbo_scheduler(as_turbo, kind):
    """run.py's flags leave the scheduler to the family, so a turbo checkpoint samples with its own Euler, as
    load_generator does; the recorded spec names the scheduler that ran."""
    from noise_diffusion.cli import generator_spec
    from noise_diffusion.commands.run import parse_args
    from noise_diffusion.context import recorded_generator

    spec = generator_spec(parse_args(["--prompt", "a red cat", "--sd_version", as_turbo[kind], "--device", "cpu"]))
    assert spec.scheduler is None
    generator = spec.build()
    assert generator.scheduler_class.__name__ == SCHEDULERS[kind]
    assert recorded_generator(generator, spec).scheduler == "default"
