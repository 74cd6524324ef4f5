"""The attention baselines (InitNO, Attend-and-Excite): the attention store, each loss on hand-made maps, InitNO's
restart logic on a stub, the guided steps, reproducibility, and Attend-and-Excite against diffusers' own pipeline."""

import math

import pytest
import torch

from noise_diffusion import SearchConfig, optimize
from noise_diffusion.baselines import generate, run_baseline
from noise_diffusion.baselines.attend_and_excite import attend_and_excite_guidance
from noise_diffusion.baselines.attention import (
    AttentionStore, attach_store, attention_resolutions, default_resolution, gaussian_kernel, recording, smooth,
)
from noise_diffusion.baselines.guidance import Counter, guided_sample
from noise_diffusion.baselines.initno import NoiseResult, initno_latents, optimize_noise
from noise_diffusion.baselines.losses import (
    Peaks, clean_loss, cross_response_loss, initno_noise_loss, kl_to_standard_normal, otsu_threshold, peak_region,
    peaks, self_conflict_loss,
)
from noise_diffusion.baselines.tokens import subject_token_indices, subject_words
from noise_diffusion.errors import UserError
from noise_diffusion.generators import load_generator

from helpers import RednessVerifier

STEPS = 6
PROMPT = "a cat and a dog"


@pytest.fixture(scope="module")
def generator(tiny_sd_dir):
    return load_generator(tiny_sd_dir, num_steps=STEPS, guidance_scale=7.5)


def latent(generator, seed=0):
    return torch.randn((1, *generator.latent_shape), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ attention store

def test_store_keeps_probability_maps_and_restores_the_processors(generator):
    unet = generator.unet
    z, emb = latent(generator), generator.encode_prompts([PROMPT])["embeds"][1:]
    t = torch.tensor(500)
    with torch.no_grad():
        before = unet(z, t, encoder_hidden_states=emb).sample
    processors = dict(unet.attn_processors)
    # the tiny UNet's attention sits at 8x8 (16x16 latents, blocks (32, 64)): a quarter of 16 (4) is absent
    assert attention_resolutions(unet, 16) == [8]
    assert default_resolution(unet, 16) == 8
    store = AttentionStore(8)
    with attach_store(unet, store), torch.no_grad():
        with recording(store):
            inside = unet(z, t, encoder_hidden_states=emb).sample
        unet(z, t, encoder_hidden_states=emb)  # not recording: nothing more kept
    # down block 1, mid block, up block 0 (two layers): one transformer each with 2 attention heads of dim 8 ... 
    assert len(store.maps["cross"]) == len(store.maps["self"]) == 4
    cross, self_ = store.aggregate("cross"), store.aggregate("self")
    assert cross.shape == (8, 8, generator.tokenizer.model_max_length)
    assert self_.shape == (8, 8, 64)
    torch.testing.assert_close(cross.sum(-1), torch.ones(8, 8))
    torch.testing.assert_close(self_.sum(-1), torch.ones(8, 8))
    for kept in store.maps["cross"]:  # every head's every query row is a distribution over the tokens
        torch.testing.assert_close(kept.sum(-1), torch.ones(kept.shape[:2]))
    # the explicit attention is the same computation as diffusers' default processor
    torch.testing.assert_close(inside, before, rtol=1e-4, atol=1e-5)
    assert {k: type(v) for k, v in unet.attn_processors.items()} == {k: type(v) for k, v in processors.items()}


# -------------------------------------------------------------------------------------------------------- losses

def test_gaussian_kernel_by_hand():
    # the originals' kernel: exp(-((x - 1) / (2 * 0.5))^2) = [e^-1, 1, e^-1] per axis, outer product, normalised
    w = torch.tensor([math.exp(-1), 1.0, math.exp(-1)])
    expected = torch.outer(w, w) / torch.outer(w, w).sum()
    torch.testing.assert_close(gaussian_kernel(3, 0.5), expected)
    delta = torch.zeros(5, 5)
    delta[2, 2] = 1.0
    out = smooth(delta)
    torch.testing.assert_close(out[1:4, 1:4], expected)
    assert float(out.sum()) == pytest.approx(1.0)
    torch.testing.assert_close(smooth(torch.full((4, 4), 0.3)), torch.full((4, 4), 0.3))  # reflect pad: flat stays flat


def uniform_cross_maps(logits):
    """[4, 4, T] maps with the same token logits at every pixel."""
    return torch.tensor(logits).expand(4, 4, len(logits)).clone()


def test_cross_response_loss_by_hand():
    # tokens: start, t1, t2, t3, last; the originals drop start and last and softmax 100x over t1..t3
    maps = uniform_cross_maps([0.5, 0.01, 0.0, 0.0, 0.3])
    e = math.e
    found = peaks(maps, [1, 2])
    assert float(found.values[0]) == pytest.approx(e / (e + 2), rel=1e-5)
    assert float(found.values[1]) == pytest.approx(1 / (e + 2), rel=1e-5)
    assert float(cross_response_loss(found)) == pytest.approx(1 - 1 / (e + 2), rel=1e-5)
    # a hot pixel: its token's peak is there
    hot = uniform_cross_maps([0.0, 0.0, 0.0, 0.0, 0.0])
    hot[1, 2, 1] = 0.1
    found = peaks(hot, [1])
    assert found.coords == [(1, 2)]


def test_self_conflict_loss_by_hand():
    r = 4
    self_maps = torch.zeros(r, r, r * r)
    left, right = torch.zeros(r, r), torch.zeros(r, r)
    left[:, 0], right[:, 3] = 1.0, 1.0
    self_maps[0, 0] = left.reshape(-1)
    self_maps[2, 3] = right.reshape(-1)
    self_maps[1, 1] = left.reshape(-1)
    dummy = [torch.zeros(r, r)] * 2
    # columns 0 and 3 smoothed by a 3x3 kernel reach columns 1 and 2 at most: no overlap
    apart = Peaks(dummy, [torch.tensor(1.0)] * 2, [(0, 0), (2, 3)])
    assert float(self_conflict_loss(self_maps, apart)) == pytest.approx(0.0, abs=1e-7)
    # the same map twice: sum(min) / sum(a + b) = 1/2 (less the 1e-6 in the denominator)
    same = Peaks(dummy, [torch.tensor(1.0)] * 2, [(0, 0), (1, 1)])
    total = float(smooth(left).sum()) * 2
    assert float(self_conflict_loss(self_maps, same)) == pytest.approx(total / 2 / (total + 1e-6), rel=1e-6)


def test_noise_loss_drops_the_self_term_while_the_cross_term_is_above_half():
    cross = uniform_cross_maps([0.0, 0.0, 0.0, 0.0, 0.0])  # every subject gets 1/3: cross loss 2/3 > 0.5
    self_maps = torch.full((4, 4, 16), 1 / 16)
    losses = initno_noise_loss(cross, self_maps, [1, 2])
    assert float(losses.cross) == pytest.approx(2 / 3, rel=1e-5)
    assert float(losses.self_) == 0.0
    assert float(losses.joint) == pytest.approx(float(losses.cross) + float(losses.clean), rel=1e-6)
    strong = uniform_cross_maps([0.0, 0.05, 0.05, -1.0, 0.0])  # two subjects at ~1/2 each: cross ~0.5 - tiny
    losses = initno_noise_loss(strong, self_maps, [1, 2])
    assert float(losses.cross) < 0.5
    assert float(losses.self_) == pytest.approx(0.5, rel=1e-4)  # identical uniform self maps overlap by half


def brute_force_otsu(levels):
    """Otsu by its definition: the first level t maximising q1·q2·(μ1 − μ2)² of {≤ t} / {> t}."""
    best, best_t = 0.0, 0
    n = len(levels)
    for t in range(256):
        low = [v for v in levels if v <= t]
        high = [v for v in levels if v > t]
        if not low or not high:
            continue
        q1, q2 = len(low) / n, len(high) / n
        sigma = q1 * q2 * (sum(low) / len(low) - sum(high) / len(high)) ** 2
        if sigma > best:
            best, best_t = sigma, t
    return best_t


def test_otsu_threshold_by_hand_and_by_definition():
    at = lambda level: (level + 0.5) / 255  # noqa: E731 (a value that reads back as this integer level)
    values = torch.tensor([at(0), at(0), at(10), at(200)])
    # t=0: .5*.5*105^2 = 2756; t=10..199: .75*.25*(200-10/3)^2 = 7252 -> the first best is 10
    assert otsu_threshold(values) == pytest.approx(10 / 255)
    generator = torch.Generator().manual_seed(3)
    for _ in range(5):
        values = torch.rand(16, 16, generator=generator) ** 3
        levels = (values * 255).to(torch.int64).reshape(-1).tolist()
        assert otsu_threshold(values) == pytest.approx(brute_force_otsu(levels) / 255)


def test_peak_region_is_four_connected():
    mask = torch.tensor([[1, 1, 0], [0, 0, 1], [1, 0, 1]], dtype=torch.bool)
    region = peak_region(mask, (0, 0))
    assert region.tolist() == [[True, True, False], [False, False, False], [False, False, False]]
    assert peak_region(mask, (1, 2)).sum() == 2  # (1, 2) and (2, 2); (2, 0) is not connected


def test_clean_loss_by_hand():
    m = torch.full((4, 4), 0.01)
    m[0, 0], m[0, 1] = 0.9, 0.6  # the peak and its region
    m[3, 3] = 0.8  # a second blob, not connected to the peak
    m[3, 0] = 0.05
    # levels 2 (x12), 12, 153, 204, 229: Otsu picks 12, so the mask is m >= 12/255: the peak region is
    # {(0,0), (0,1)}; outside it the largest value is 0.8 > the region's smallest 0.6 -> loss 0.8
    found = Peaks([m], [m[0, 0]], [(0, 0)])
    assert float(clean_loss(found)) == pytest.approx(0.8)
    m2 = m.clone()
    m2[3, 3] = 0.5  # now everything outside is below the region's minimum: no loss
    assert float(clean_loss(Peaks([m2], [m2[0, 0]], [(0, 0)]))) == 0.0


def test_kl_term_by_hand():
    log_var = torch.tensor([0.0, math.log(2.0)])
    mean = torch.tensor([1.0, 0.0])
    # -0.5 * mean(1 + lv - mu^2 - e^lv) = -0.5 * ((1 + 0 - 1 - 1) + (1 + ln2 - 0 - 2)) / 2
    expected = -0.5 * ((1 + 0 - 1 - 1) + (1 + math.log(2) - 0 - 2)) / 2
    assert float(kl_to_standard_normal(log_var, mean)) == pytest.approx(expected)


# ------------------------------------------------------------------------------------------------- InitNO's loop

def scripted_optimizer(outcomes, calls):
    """A stub round: returns the scripted (succeeded, score) of each call and records (z, max_step)."""

    def optimize(unet, timestep, z, text, indices, store, counter, max_step):
        succeeded, score = outcomes[len(calls)]
        calls.append((z, max_step))
        return NoiseResult(z + 100, succeeded, score, score, 0.0, max_step)

    return optimize


def fresh_draws():
    state = {"n": 0}

    def draw():
        state["n"] += 1
        return torch.full((1,), float(state["n"]))

    return draw


def test_initno_stops_at_the_first_successful_round():
    calls = []
    z0 = torch.zeros(1)
    chosen, info = initno_latents(None, 0, z0, fresh_draws(), None, [1, 2], None, Counter(),
                                  optimize=scripted_optimizer([(False, 0.9), (True, 0.3)], calls))
    assert [step for _, step in calls] == [10, 10]
    assert [float(z) for z, _ in calls] == [0.0, 1.0]  # round 2 starts from a fresh draw
    assert float(chosen) == 101.0 and info.succeeded and info.chosen_round == 1 and info.extra_steps == 0


def test_initno_runs_fifty_more_steps_from_the_best_failed_round():
    calls = []
    outcomes = [(False, 0.9), (False, 0.4), (False, 0.7), (False, 0.4), (False, 1.2), (False, 0.0)]
    chosen, info = initno_latents(None, 0, torch.zeros(1), fresh_draws(), None, [1, 2], None, Counter(),
                                  optimize=scripted_optimizer(outcomes, calls))
    assert [step for _, step in calls] == [10] * 5 + [50]
    # rounds 1 and 3 tie at 0.4: the earlier one wins; the last call restarts from round 1's *initial* latent (1.0)
    assert float(calls[-1][0]) == 1.0
    assert float(chosen) == 101.0 and not info.succeeded and info.chosen_round == 1 and info.rounds == 5


def test_a_noise_round_keeps_the_kl_below_its_limit(generator):
    unet = generator.unet
    store = AttentionStore(8)
    z = latent(generator, 4)
    with attach_store(unet, store):
        text = generator.encode_prompts([PROMPT])["embeds"][1:]
        result = optimize_noise(unet, torch.tensor(981), z, text, [4, 11], store,
                                counter := Counter(), max_step=3)
    assert result.steps == 3 and not result.succeeded  # a random model's attention stays diffuse
    assert counter.forwards == 3 and counter.backwards == 3
    assert float(kl_to_standard_normal(result.log_var, result.mean)) <= 1e-3
    torch.testing.assert_close(result.latent, z * torch.exp(0.5 * result.log_var) + result.mean)
    assert not torch.equal(result.latent, z)


# ---------------------------------------------------------------------------------------------- guided denoising

def count_unet_calls(unet):
    calls = []
    handle = unet.register_forward_hook(lambda module, args, kwargs_or_out, *rest: calls.append(args[0].shape[0]))
    return calls, handle


@pytest.mark.parametrize("method", ["attend_and_excite", "initno_guidance"])
def test_number_of_guided_steps(generator, method):
    from noise_diffusion.baselines.initno import initno_guidance

    unet = generator.unet
    guidance = (attend_and_excite_guidance([4, 11], max_iter_to_alter=3, thresholds={}) if method == "attend_and_excite"
                else initno_guidance(max_iter_to_alter=3, indices=[4, 11]))  # refinement at 10, 20: none of 6 steps
    store, counter = AttentionStore(8), Counter()
    calls, handle = count_unet_calls(unet)
    z = latent(generator, 2)
    try:
        with attach_store(unet, store):
            out, info = guided_sample(generator, z, generator.encode_prompts([PROMPT]), store, guidance, counter)
    finally:
        handle.remove()
    assert info.guided_steps == 3 and info.refinement_iterations == 0
    assert calls == [1, 2, 1, 2, 1, 2, 2, 2, 2]  # a measuring forward before each of the first 3 guided steps
    assert counter.forwards == 3 + 2 * STEPS and counter.backwards == 3
    plain = generator.sample(z, generator.encode_prompts([PROMPT])).latents
    assert not torch.allclose(out, plain)


def test_attend_and_excite_matches_the_diffusers_pipeline(generator):
    from diffusers.pipelines.deprecated.stable_diffusion_attend_and_excite.pipeline_stable_diffusion_attend_and_excite \
        import StableDiffusionAttendAndExcitePipeline

    thresholds = {1: 0.05, 3: 0.8}  # refinement at two steps (the authors refine at 0, 10, 20 of 50)
    z = latent(generator, 7)
    indices = subject_token_indices(generator.tokenizer, PROMPT)
    store, counter = AttentionStore(8, ("cross",)), Counter()
    with attach_store(generator.unet, store):
        ours, info = guided_sample(generator, z, generator.encode_prompts([PROMPT]), store,
                                   attend_and_excite_guidance(indices, 4, thresholds=thresholds), counter)
    assert info.refinement_iterations > 0  # the refinement path is exercised
    p = generator.pipe
    reference = StableDiffusionAttendAndExcitePipeline(
        vae=p.vae, text_encoder=p.text_encoder, tokenizer=p.tokenizer, unet=p.unet,
        scheduler=generator.scheduler_class.from_config(generator.scheduler_config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    reference.set_progress_bar_config(disable=True)
    theirs = reference(prompt=PROMPT, token_indices=indices, num_inference_steps=STEPS, guidance_scale=7.5,
                       latents=z.clone(), max_iter_to_alter=4, thresholds=thresholds, attn_res=(8, 8),
                       output_type="latent").images
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------ as methods

@pytest.fixture(scope="module")
def verifier(generator):
    return RednessVerifier()


@pytest.fixture
def short_initno(monkeypatch):
    """InitNO's loop with 2-step rounds and 3 final steps (the same code path, 13 optimiser steps instead of 100)."""
    from noise_diffusion.baselines import initno

    monkeypatch.setattr(initno, "ROUND_STEPS", 2)
    monkeypatch.setattr(initno, "FINAL_STEPS", 3)


def test_initno_through_the_loop_is_reproducible_and_counts_its_compute(generator, verifier, short_initno):
    config = SearchConfig(method="initno")
    (a,) = optimize(generator, verifier, [PROMPT], [3], config, progress=False)
    (b,) = optimize(generator, verifier, [PROMPT], [3], config, progress=False, token_indices=[[4, 11]])
    torch.testing.assert_close(a.best_image, b.best_image, rtol=0, atol=0)  # computed indices = the given ones
    info = a.epochs[0]["initno"]
    assert info["token_indices"] == [4, 11] and info["attention_res"] == 8
    assert info["initno"]["rounds"] == 5 and not info["initno"]["succeeded"]  # random model: never succeeds
    # 5 rounds x 2 steps + 3 more: one forward and one backward each; then 6 guided steps, each measured once
    assert a.compute["model_backwards"] == 13 + 6
    assert a.compute["model_evals"] == 13 + 6 + 2 * STEPS
    assert a.best_score == a.initial_score == a.epochs[0]["score"]
    assert float(verifier(a.best_image[None], [PROMPT])) == pytest.approx(a.best_score, abs=1e-6)


def test_baselines_differ_by_seed_and_from_the_plain_sampler(generator, verifier):
    (one,) = run_baseline("attend_and_excite", generator, verifier, [PROMPT], [1])
    (two,) = run_baseline("attend_and_excite", generator, verifier, [PROMPT], [2])
    (again,) = run_baseline("attend_and_excite", generator, verifier, [PROMPT], [1])
    torch.testing.assert_close(one.best_image, again.best_image, rtol=0, atol=0)
    assert not torch.allclose(one.best_image, two.best_image)
    (plain,) = optimize(generator, verifier, [PROMPT], [1], SearchConfig(method="none"), progress=False)
    assert not torch.allclose(one.best_image, plain.best_image, atol=1e-3)
    torch.testing.assert_close(one.best_latent, plain.best_latent)  # A&E starts from the seed's own latent


def test_noise_only_samples_its_optimised_latent_plainly(generator, verifier, short_initno):
    image, start, info, counter = generate("initno_noise_only", generator, PROMPT, [4, 11], latent(generator, 5),
                                           lambda: latent(generator, 6))
    plain = generator.decode(generator.sample(start, generator.encode_prompts([PROMPT])).latents)
    torch.testing.assert_close(image, plain, rtol=1e-4, atol=1e-4)
    assert counter.forwards == 13 + 2 * STEPS and counter.backwards == 13


# ----------------------------------------------------------------------------------------------- token indices

def test_subject_words_and_token_positions(generator):
    assert subject_words("a red car under a blue bench") == (2, 6)
    assert subject_words("a dog on top of a cat") == (1, 6)
    assert subject_words("a 3 left of a 7") == (1, 5)
    # the tiny tokenizer spells words letter by letter: 'a', 'cat' = c a t, ... -> the last letters of cat and dog
    ids = generator.tokenizer(PROMPT).input_ids
    positions = subject_token_indices(generator.tokenizer, PROMPT)
    assert positions == [4, 11]
    assert generator.tokenizer.convert_ids_to_tokens([ids[4], ids[11]]) == ["t</w>", "g</w>"]
    with pytest.raises(UserError, match="cannot find two subjects"):
        subject_words("a cat")
    with pytest.raises(UserError, match="outside the prompt"):
        run_baseline("initno", generator, RednessVerifier(), [PROMPT], [0], [[4, 40]])


def test_unsupported_models_and_prompts_are_one_line_errors(tiny_sd_dir, tiny_clip_dir, capsys):
    from noise_diffusion.baselines import check_generator

    class FluxLike:
        family, name = "flux", "tiny-flux"

    with pytest.raises(UserError, match="need a Stable Diffusion 1.x/2.x-style model"):
        check_generator(FluxLike())
    import run as run_cli

    with pytest.raises(SystemExit) as stop:
        run_cli.cli.main_guard(lambda: run_cli.main([
            "--prompt", "a cat", "--method", "initno", "--sd_version", tiny_sd_dir, "--vqa_model", tiny_clip_dir,
            "--device", "cpu", "--result_root", "unused"]))
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot find two subjects in 'a cat'") and err.count("\n") == 1


def test_the_toy_world_reads_its_attention_at_8x8_and_is_guided():
    from noise_diffusion.baselines.tokens import subject_token_indices as positions

    toy = load_generator("toy-digits", num_steps=4)
    # cross-attention at 8x8 (outer blocks) and 4x4 (inner blocks and mid) on 8x8 latents: the finer level is read
    assert attention_resolutions(toy.unet, 8) == [4, 8] and default_resolution(toy.unet, 8) == 8
    prompt = "a 2 left of a 3"
    indices = positions(toy.tokenizer, prompt)
    assert indices == [2, 6]  # the toy datasets' indices: one token per word
    store, counter = AttentionStore(8, ("cross",)), Counter()
    z = torch.randn((1, *toy.latent_shape), generator=torch.Generator().manual_seed(33))
    with attach_store(toy.unet, store):
        out, info = guided_sample(toy, z, toy.encode_prompts([prompt]), store,
                                  attend_and_excite_guidance(indices, thresholds={}), counter)
    assert store.aggregate("cross").shape == (8, 8, toy.tokenizer.model_max_length)
    assert info.guided_steps == 4 and counter.forwards == 4 + 2 * 4
    assert not torch.allclose(out, toy.sample(z, toy.encode_prompts([prompt])).latents)
