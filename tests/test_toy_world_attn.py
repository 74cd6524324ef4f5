"""The attention toy world ``toy-digits-attn``: its specification, the shipped pipeline and verifiers loaded by name,
and the property it exists for (a subject's cross-attention sits where that digit is drawn)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from noise_diffusion import SearchConfig, load_generator, load_verifier, optimize
from noise_diffusion.toy import PIPELINE_ATTN, world, world_attn

needs_pipeline = pytest.mark.skipif(not (PIPELINE_ATTN / "model_index.json").is_file(),
                                reason="the attention world's pipeline is not installed")


# -- specification -----------------------------------------------------------------------------------------------------
def test_held_out_pairs_extend_the_first_world_and_keep_every_digit_twice():
    pairs = world_attn.held_out_pairs()
    assert world.held_out_pairs() < pairs and len(pairs) == 10 and (1, 5) in pairs
    assert np.bincount(np.ravel(sorted(pairs)), minlength=10).tolist() == [2] * 10
    assert not any(world_attn.is_held_out_config(*c) for c in world_attn.training_configurations())
    assert sum(world_attn.is_held_out_prompt(p) for p in world_attn.existence_prompts()) == 20


def test_ambiguous_scenes_change_only_the_chosen_digit():
    images, labels = world.digits()
    a, b = images[0], images[1]
    clear = world.render("H", a, b, (0, 0, 0, 0))
    rng = np.random.default_rng(0)
    faint = world_attn.ambiguous_render("H", (a, b), (0, 0, 0, 0), 0, "faint", rng)
    ratio = faint[8:24, 0:16].sum() / clear[8:24, 0:16].sum()
    assert 0.1 <= ratio <= 0.35 and np.array_equal(faint[8:24, 16:32], b)
    small = world_attn.ambiguous_render("V", (a, b), (0, 0, 0, 0), 1, "small", rng)
    assert np.array_equal(small[0:16, 8:24], a)
    ink = small[16:32, 8:24] > 0.05
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    assert np.ptp(rows) + 1 <= 10 and np.ptp(cols) + 1 <= 10  # at most 0.6 of 16 px
    moved = world_attn.ambiguous_render("H", (a, np.zeros_like(b)), (0, 0, 0, 0), 0, "overlapped", rng)
    alone = world.render("H", a, np.zeros_like(b), (0, 0, 0, 0))
    shift = np.flatnonzero(moved.sum(0) > 0).min() - np.flatnonzero(alone.sum(0) > 0).min()
    assert 7 <= shift <= 11 and np.allclose(moved.sum(), alone.sum())  # pushed right, onto the second's box
    canvases, kinds = world_attn.sample_canvases([("H", 3, 7)] * 300, np.random.default_rng(1))
    assert canvases.shape == (300, 3, 32, 32) and 0.24 <= np.mean([k != "" for k in kinds]) <= 0.36


def test_prompt_sets_mark_subjects_and_held_out_prompts(tmp_path):
    import json

    simple, complex_ = world_attn.write_datasets(tmp_path)
    entries = json.loads(simple.read_text())["toy_and"] + json.loads(complex_.read_text())
    assert len(entries) == 90 + 360 and sum(e["held_out"] for e in entries) == 20 + 80
    for entry in entries:
        words, parsed = entry["prompt"].split(), world.parse_prompt(entry["prompt"])
        assert [words[i - 1] for i in entry["indices"]] == [str(parsed.a), str(parsed.b)]


# -- the shipped pipeline ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def attn():
    return load_generator("toy-digits-attn")


@needs_pipeline
def test_pipeline_loads_by_name_and_with_diffusers(attn):
    from diffusers import StableDiffusionPipeline

    assert attn.latent_shape == (4, 8, 8) and (attn.height, attn.width) == (32, 32)
    assert attn.settings()["num_steps"] == 15 and attn.settings()["guidance_scale"] == 5.0
    pipe = StableDiffusionPipeline.from_pretrained(PIPELINE_ATTN, safety_checker=None, requires_safety_checker=False)
    assert pipe.unet.dtype == torch.float32 and pipe.text_encoder.config.num_hidden_layers == 0
    size = sum(f.stat().st_size for f in Path(PIPELINE_ATTN).rglob("*") if f.is_file())
    assert size <= 5 * 2**20


@needs_pipeline
def test_text_encoder_does_not_mix_tokens(attn):
    """Changing one word changes that token's output and no other (the definition of a mixing-free encoder)."""
    tokenizer, encoder = attn.tokenizer, attn.text_encoder
    ids = tokenizer(["a 3 and a 7", "a 3 and a 8"], padding="max_length", max_length=tokenizer.model_max_length,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        out = encoder(ids.to(attn.device))[0]
    changed = (out[0] - out[1]).abs().amax(-1) > 1e-6
    assert changed.tolist() == [i == 5 for i in range(tokenizer.model_max_length)]


def test_verifiers_under_the_worlds_names_score_a_faithful_canvas_high():
    canvases = torch.from_numpy(world.sample_canvases([("H", 3, 7), ("H", 7, 3)], np.random.default_rng(3)))
    for name in ("toy-digits-attn-cnn", "toy-digits-attn-heldout", "toy-digits-attn-heldout-resnet"):
        verifier = load_verifier(name)
        with torch.no_grad():
            scores = verifier(canvases, ["a 3 left of a 7", "a 3 left of a 7"])
        assert scores[0] > 0.5 and scores[1] < 0.05, name


@needs_pipeline
def test_seeded_generation_reproduces(attn):
    guide = load_verifier("toy-digits-attn-cnn")
    runs = [optimize(attn, guide, ["a 2 and a 6"], [4], SearchConfig(method="none"), progress=False)[0]
            for _ in range(2)]
    assert torch.equal(runs[0].best_image, runs[1].best_image)
    assert runs[0].best_image.shape == (3, 32, 32)


def first_step_subject_maps(generator, prompt: str, indices: list[int], seed: int) -> list[torch.Tensor]:
    """The subjects' prepared 8x8 cross-attention maps at the first denoising step, through the baselines' store."""
    from noise_diffusion.baselines.attention import AttentionStore, attach_store, recording, smooth, text_softmax
    from noise_diffusion.generators.base import initial_latents

    scheduler = generator.fresh_scheduler()
    t = scheduler.timesteps[0]
    z = initial_latents(generator.latent_shape, [seed]).to(generator.device) * scheduler.init_noise_sigma
    text = generator.encode_prompts([prompt])["embeds"][1:]
    store = AttentionStore(8, ("cross",))
    with torch.no_grad(), attach_store(generator.unet, store), recording(store):
        generator.unet(scheduler.scale_model_input(z, t), t, encoder_hidden_states=text)
    prepared = text_softmax(store.aggregate("cross"))  # the originals' preparation: text tokens only, x100 softmax
    return [smooth(prepared[:, :, i - 1]) for i in indices]  # indices count the start token as 0


@needs_pipeline
def test_subject_attention_is_concentrated_and_apart_where_the_first_world_is_flat(attn):
    """A fixed case ("a 4 above a 1", seed 0); benchmarks/toy_attention.py measures the distribution. The first
    world, whose text encoder mixes tokens, gives near-uniform maps on the same case (the test can fail)."""

    def peaks_and_overlap(generator):
        maps = first_step_subject_maps(generator, "a 4 above a 1", [2, 5], seed=0)
        return [float(m.max()) for m in maps], float(torch.minimum(*maps).sum() / (maps[0] + maps[1]).sum())

    peaks, overlap = peaks_and_overlap(attn)
    assert min(peaks) > 0.25 and overlap < 0.25
    flat_peaks, flat_overlap = peaks_and_overlap(load_generator("toy-digits"))
    assert max(flat_peaks) < 0.15 and flat_overlap > 0.4
