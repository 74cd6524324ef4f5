"""SD3, SDXL and FLUX generators on tiny pipelines built from configs and reloaded from their folders.

For each family: the generator is chosen from the folder's own model_index.json; sampling (and decoding) equals
diffusers' own pipeline call from the same latents; replay reproduces sampling exactly; the replayed gradient is the
gradient at the final latent times the coefficient the schedule predicts (1 for flow matching); run.py works end to end.
"""

import json
import math

import pytest
import torch

import run as run_cli
from noise_diffusion.errors import UserError
from noise_diffusion.generators import GENERATORS, MODEL_ALIASES, load_generator, resolve_model
from noise_diffusion.generators.base import initial_latents
from noise_diffusion.results import run_folder
from noise_diffusion.testing.families import (
    build_tiny_flux_pipeline,
    build_tiny_sd3_pipeline,
    build_tiny_sdxl_pipeline,
)

from helpers import RednessVerifier

FAMILIES = ("sd3", "sdxl", "flux")
CLASSES = {"sd3": "StableDiffusion3Generator", "sdxl": "StableDiffusionXLGenerator", "flux": "FluxGenerator"}
PIPELINES = {"sd3": "StableDiffusion3Pipeline", "sdxl": "StableDiffusionXLPipeline", "flux": "FluxPipeline"}
PROMPTS = ["a red cat", "a blue dog on a bench"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {
        "sd3": str(build_tiny_sd3_pipeline(root / "sd3")),
        "sdxl": str(build_tiny_sdxl_pipeline(root / "sdxl")),
        "flux": str(build_tiny_flux_pipeline(root / "flux_dev", variant="dev")),
        "schnell": str(build_tiny_flux_pipeline(root / "flux_schnell", variant="schnell")),
    }


def _load(folders, family, **options):
    options.setdefault("scheduler", "default")
    return load_generator(folders[family], "cpu", torch.float32, **options)


@pytest.mark.parametrize("family", FAMILIES)
def test_generator_is_chosen_from_model_index(folders, family):
    with open(f"{folders[family]}/model_index.json", encoding="utf-8") as handle:
        assert json.load(handle)["_class_name"] == PIPELINES[family]
    generator = _load(folders, family)
    assert type(generator).__name__ == CLASSES[family]
    assert GENERATORS[PIPELINES[family]] is type(generator)
    # the folder's noise_diffusion.json (tiny sizes, 4 steps) overrides the family defaults
    settings = generator.settings()
    assert (settings["height"], settings["width"], settings["num_steps"]) == (32, 32, 4)
    assert generator.latent_shape == (4, 16, 16)


def test_short_names_and_family_defaults():
    assert resolve_model("sd-3.5-medium") == "stabilityai/stable-diffusion-3.5-medium"
    assert resolve_model("sdxl-base-1.0") == "stabilityai/stable-diffusion-xl-base-1.0"
    assert resolve_model("flux.1-schnell") == "black-forest-labs/FLUX.1-schnell"
    assert resolve_model("flux.1-dev") == "black-forest-labs/FLUX.1-dev"
    sd3 = GENERATORS["StableDiffusion3Pipeline"].SAMPLING
    assert (sd3.num_steps, sd3.guidance_scale, sd3.height, sd3.width) == (28, 7.0, 512, 512)  # the authors' SD3.5 ones
    assert "flux.1-dev" in MODEL_ALIASES


def _pipeline_images(generator, family, z):
    """Diffusers' own pipeline call with the same latents and settings (FLUX takes packed latents)."""
    common = dict(prompt=PROMPTS, num_inference_steps=generator.num_steps, height=generator.height,
                  width=generator.width, guidance_scale=generator.guidance_scale, output_type="pt")
    if family == "sd3":
        return generator.pipe(latents=z.clone(), negative_prompt="", max_sequence_length=generator.max_sequence_length,
                              **common).images
    if family == "sdxl":  # no negative prompt: diffusers' default (zeros, force_zeros_for_empty_prompt)
        return generator.pipe(latents=z.clone(), **common).images
    packed = type(generator.pipe)._pack_latents(z.clone(), *z.shape)  # diffusers' own packing
    return generator.pipe(latents=packed, max_sequence_length=generator.max_sequence_length,
                          **common).images


@pytest.mark.parametrize("family", FAMILIES + ("schnell",))
def test_sampling_and_decoding_match_the_diffusers_pipeline(folders, family):
    generator = _load(folders, family)
    z = initial_latents(generator.latent_shape, [1, 2])
    ours = generator.decode(generator.sample(z, generator.encode_prompts(PROMPTS)).latents)
    theirs = _pipeline_images(generator, "flux" if family == "schnell" else family, z)
    assert ours.shape == (2, 3, 32, 32)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    assert 0.05 < ours.std() and not torch.equal(ours[0], ours[1])


@pytest.mark.parametrize("family, evals_per_step", [("sd3", 2), ("sdxl", 2), ("flux", 1), ("schnell", 1)])
def test_replay_reproduces_sampling_exactly(folders, family, evals_per_step):
    generator = _load(folders, family)
    z = initial_latents(generator.latent_shape, [3, 4])
    sampled = generator.sample(z, generator.encode_prompts(PROMPTS))
    assert len(sampled.record) == 4
    assert sampled.latents.shape == z.shape  # FLUX returns unpacked latents
    assert torch.equal(generator.replay(z, sampled.record), sampled.latents)
    assert generator.model_evals_per_generation == evals_per_step * 4


def _expected_coefficient(generator, family) -> float:
    """d(final latent)/dz with the predictions held fixed, from the schedule itself: 1 for flow matching (each step adds
    (sigma_next - sigma) * v); for SDXL's Euler, the initial noise scale sqrt(sigma_first^2 + 1) with
    sigma = sqrt((1 - alpha_bar) / alpha_bar) at the first timestep (each Euler step has coefficient 1)."""
    if family != "sdxl":
        return 1.0
    scheduler = generator.fresh_scheduler()
    alpha_bar = float(scheduler.alphas_cumprod[int(scheduler.timesteps[0])])
    return math.sqrt((1 - alpha_bar) / alpha_bar + 1)


@pytest.mark.parametrize("family", FAMILIES)
def test_replay_gradient_is_parallel_to_final_latent_gradient(folders, family):
    generator = _load(folders, family)
    z = initial_latents(generator.latent_shape, [5, 6])
    sampled = generator.sample(z, generator.encode_prompts(PROMPTS))
    verifier = RednessVerifier().calibrate(generator.decode(sampled.latents))

    leaf = z.clone().requires_grad_(True)
    verifier(generator.decode(generator.replay(leaf, sampled.record)), PROMPTS).sum().backward()
    final = sampled.latents.clone().requires_grad_(True)
    verifier(generator.decode(final), PROMPTS).sum().backward()

    assert torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0
    for item in range(2):
        cosine = torch.nn.functional.cosine_similarity(leaf.grad[item].flatten(), final.grad[item].flatten(), dim=0)
        assert cosine > 0.9999
    coefficient = _expected_coefficient(generator, family)
    if family == "sdxl":
        assert coefficient > 2  # Euler scales the initial noise (sigma ~4 at t=751 with 4 leading steps): not vacuous
    torch.testing.assert_close(leaf.grad, coefficient * final.grad, rtol=1e-3, atol=1e-8)


@pytest.mark.parametrize("family", FAMILIES)
def test_run_py_three_epochs_end_to_end(folders, family, tiny_clip_dir, tmp_path):
    root = tmp_path / "results"
    memory_flag = {"sd3": "--drop_t5", "sdxl": "--vae_slicing", "flux": "--vae_checkpointing"}[family]
    argv = ["--prompt", "a dog under a frog", "--seed", "3", "--sd_version", folders[family],
            "--vqa_model", tiny_clip_dir, "--max_epoch", "3", "--num_candidate_noises", "4", "--result_root", str(root),
            "--device", "cpu", "--quiet", "--save_all_epochs", memory_flag]
    assert run_cli.main(argv) == 0
    record = json.loads((run_folder(root, "a dog under a frog", 3) / "result.json").read_text())
    assert record["config"]["generator"][memory_flag.removeprefix("--")] is True  # the flag reached the generator
    assert [e["epoch"] for e in record["epochs"]] == [0, 1, 2, 3]
    assert record["best_score"] == max(e["score"] for e in record["epochs"])
    gen = record["config"]["models"]["generator"]  # the built model's own settings
    assert gen["family"] == {"sd3": "stable-diffusion-3", "sdxl": "stable-diffusion-xl", "flux": "flux"}[family]
    per_generation = 4 * (1 if family == "flux" else 2)
    assert record["compute"]["model_evals"] == 4 * per_generation  # 4 generations: initial + 3 epochs
    # every epoch moves the latent (γ > 0 unless the score is exactly 1), so every saved image differs
    images = [path.read_bytes() for path in sorted((run_folder(root, "a dog under a frog", 3) / "epochs").iterdir())]
    assert len(images) == 4 and len(set(images)) == 4


def test_flux_variants_take_their_own_defaults(folders):
    from noise_diffusion.generators.flux import VARIANT_SAMPLING

    schnell = _load(folders, "schnell", num_steps=None, guidance_scale=None)
    dev = _load(folders, "flux", num_steps=None, guidance_scale=None)
    assert (schnell.variant, dev.variant) == ("schnell", "dev")
    assert schnell.guidance_scale == 0.0 and schnell.settings()["guidance"] == "none"
    assert dev.guidance_scale == VARIANT_SAMPLING["dev"].guidance_scale == 3.5
    # the folders' noise_diffusion.json sets 4 steps; without it each variant falls back to its own
    assert schnell.num_steps == 4 and VARIANT_SAMPLING["schnell"].num_steps == 4
    assert VARIANT_SAMPLING["dev"].num_steps == 28


def test_flux_distilled_guidance_changes_the_image(folders):
    """Guidance is an input of the dev transformer, not CFG: another value gives another image at the same cost."""
    low, high = _load(folders, "flux", guidance_scale=1.0), _load(folders, "flux", guidance_scale=6.0)
    z = initial_latents(low.latent_shape, [8])
    a = low.sample(z, low.encode_prompts(["a cat"])).latents
    b = high.sample(z, high.encode_prompts(["a cat"])).latents
    assert not torch.allclose(a, b)
    assert low.model_evals_per_generation == high.model_evals_per_generation == 4


def test_sd3_without_t5_uses_zero_t5_embeddings(folders):
    full, dropped = _load(folders, "sd3"), _load(folders, "sd3", drop_t5=True)
    assert dropped.pipe.text_encoder_3 is None and dropped.settings()["t5"] is False
    with_t5, without = full.encode_prompts(["a cat"]), dropped.encode_prompts(["a cat"])
    clip_tokens = full.pipe.tokenizer.model_max_length
    # the CLIP part is the same; the T5 part (after the 77 CLIP tokens) is zeros without T5
    torch.testing.assert_close(without["embeds"][:, :clip_tokens], with_t5["embeds"][:, :clip_tokens])
    assert without["embeds"][:, clip_tokens:].abs().max() == 0
    assert with_t5["embeds"][:, clip_tokens:].abs().max() > 0
    torch.testing.assert_close(without["pooled"], with_t5["pooled"])
    z = initial_latents(dropped.latent_shape, [0])
    assert torch.isfinite(dropped.sample(z, without).latents).all()


def test_sd3_t5_on_another_device_gives_the_same_conditioning(folders):
    here, elsewhere = _load(folders, "sd3"), _load(folders, "sd3", t5_device="cpu")
    a, b = here.encode_prompts(PROMPTS), elsewhere.encode_prompts(PROMPTS)
    torch.testing.assert_close(a["embeds"], b["embeds"])
    assert elsewhere.settings()["t5_device"] == "cpu"


def test_sd3_guidance_at_most_one_turns_cfg_off(folders):
    generator = _load(folders, "sd3", guidance_scale=1.0)
    conditioning = generator.encode_prompts(PROMPTS)
    assert conditioning["embeds"].shape[0] == 2  # no unconditional half
    assert generator.model_evals_per_generation == 4


def test_sdxl_ddim_option_and_vae_options(folders):
    generator = _load(folders, "sdxl", scheduler="ddim", vae_tiling=True, vae_slicing=True)
    assert generator.scheduler_class.__name__ == "DDIMScheduler"
    assert generator.scheduler_config["clip_sample"] is False
    assert generator.pipe.vae.use_tiling and generator.pipe.vae.use_slicing
    settings = generator.settings()
    assert settings["vae_tiling"] and settings["vae_slicing"] and not settings["cpu_offload"]
    z = initial_latents(generator.latent_shape, [1])
    sampled = generator.sample(z, generator.encode_prompts(["a cat"]))
    assert torch.equal(generator.replay(z, sampled.record), sampled.latents)


@pytest.mark.parametrize(
    "family, options, message",
    [
        ("flux", {"negative_prompt": "blurry"}, "negative prompt"),
        ("sd3", {"scheduler": "pndm"}, "scheduler"),
        ("sdxl", {"scheduler": "pndm"}, "scheduler"),
        ("sd3", {"cpu_offload": True}, "cpu_offload"),
        ("sd3", {"drop_t5": True, "t5_device": "cpu"}, "drop_t5"),
        ("flux", {"drop_t5": True}, "drop_t5"),  # FLUX's T5 is its main text conditioning
        ("sdxl", {"t5_device": "cpu"}, "t5_device"),
        ("sd3", {"height": 30}, "multiples"),
        ("flux", {"width": 34}, "multiples"),
    ],
)
def test_bad_options_are_user_errors(folders, family, options, message):
    with pytest.raises(UserError, match=message):
        _load(folders, family, **options)


def test_vae_checkpointing_gives_the_same_gradient(folders):
    plain, checkpointed = _load(folders, "sd3"), _load(folders, "sd3", vae_checkpointing=True)
    assert checkpointed.settings()["vae_checkpointing"] and not plain.settings()["vae_checkpointing"]
    z = initial_latents(plain.latent_shape, [9])
    sampled = plain.sample(z, plain.encode_prompts(["a cat"]))
    verifier = RednessVerifier(center=0.0, scale=0.5)
    grads = []
    for generator in (plain, checkpointed):
        leaf = z.clone().requires_grad_(True)
        verifier(generator.decode(generator.replay(leaf, sampled.record)), ["a cat"]).sum().backward()
        grads.append(leaf.grad)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-9)


def test_memory_options_can_come_from_the_folder(tmp_path):
    """A pipeline folder's noise_diffusion.json may carry loader options too (the command line has no flag for them)."""
    folder = build_tiny_sdxl_pipeline(tmp_path / "sdxl")
    settings_file = folder / "noise_diffusion.json"
    settings_file.write_text(json.dumps({**json.loads(settings_file.read_text()), "vae_slicing": True}))
    generator = load_generator(str(folder), "cpu", torch.float32)
    assert generator.pipe.vae.use_slicing and generator.settings()["vae_slicing"]


@pytest.mark.parametrize("family, denoiser", [("sd3", "transformer"), ("sdxl", "unet"), ("flux", "transformer")])
def test_compile_option_wraps_the_denoiser(folders, family, denoiser):
    """Accepted and recorded; the compiled module is not run here (compiling on a small CPU takes minutes)."""
    generator = _load(folders, family, compile=True)
    assert isinstance(getattr(generator, denoiser), torch._dynamo.eval_frame.OptimizedModule)
    assert generator.settings()["compile"] is True
    assert generator.latent_shape == (4, 16, 16)  # config still reachable through the wrapper
