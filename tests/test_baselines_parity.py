"""The attention baselines against independent references, bit for bit, on the toy world (offline, CPU).

- Attend-and-Excite: diffusers' own ``StableDiffusionAttendAndExcitePipeline`` from the same latent.
- InitNO: a reference written here from the authors' formulas (their attention store keyed by place in the UNet and
  summed up, down, mid; their map preparation, losses and optimiser), with diffusers' attention processor and Gaussian
  smoothing module and nothing of this package's baseline code. The noise optimisation must end at the same latent
  and the guidance loss must have the same gradient.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from noise_diffusion.baselines.attend_and_excite import attend_and_excite_guidance
from noise_diffusion.baselines.attention import AttentionStore, attach_store, recording
from noise_diffusion.baselines.guidance import Counter, guided_sample
from noise_diffusion.baselines.initno import optimize_noise
from noise_diffusion.baselines.losses import initno_guidance_loss
from noise_diffusion.generators import load_generator

A_AND_E = "diffusers.pipelines.deprecated.stable_diffusion_attend_and_excite.pipeline_stable_diffusion_attend_and_excite"
PROMPT, INDICES, RESOLUTION = "a 2 left of a 3", [2, 6], 8


@pytest.fixture(scope="module")
def toy():
    return load_generator("toy-digits")


def seeded(generator, seed):
    return torch.randn((1, *generator.latent_shape), generator=torch.Generator().manual_seed(seed))


def test_attend_and_excite_equals_the_diffusers_pipeline_bit_for_bit(toy):
    module = pytest.importorskip(A_AND_E)
    thresholds = {0: 0.05, 10: 0.5, 20: 0.8}  # the authors' refinement steps, on the toy world's 25 steps
    z = seeded(toy, 3)
    store = AttentionStore(RESOLUTION, ("cross",))
    with attach_store(toy.unet, store):
        ours, info = guided_sample(toy, z, toy.encode_prompts([PROMPT]), store,
                                   attend_and_excite_guidance(INDICES, 25, thresholds=thresholds), Counter())
    assert info.refinement_iterations > 0 and info.guided_steps == 25
    p = toy.pipe
    reference = module.StableDiffusionAttendAndExcitePipeline(
        vae=p.vae, text_encoder=p.text_encoder, tokenizer=p.tokenizer, unet=p.unet,
        scheduler=toy.scheduler_class.from_config(toy.scheduler_config), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    reference.set_progress_bar_config(disable=True)
    theirs = reference(prompt=PROMPT, token_indices=INDICES, num_inference_steps=toy.num_steps,
                       guidance_scale=toy.guidance_scale, latents=z.clone(), max_iter_to_alter=25,
                       thresholds=thresholds, attn_res=(RESOLUTION, RESOLUTION), output_type="latent").images
    assert torch.equal(ours, theirs), float((ours - theirs).abs().max())


# ------------------------------------------------------------------------- InitNO, from the authors' formulas

class PlaceStore:
    """The authors' attention store: the maps of one forward at one resolution, kept by kind and by place in the
    UNet; the aggregate of a kind concatenates the places up, down, mid and averages over layers and heads."""

    def __init__(self, resolution):
        self.resolution, self.maps = resolution, {}

    def __call__(self, probabilities, is_cross, place):
        if probabilities.shape[1] == self.resolution ** 2:
            self.maps.setdefault((place, is_cross), []).append(probabilities)

    def aggregate(self, is_cross):
        r = self.resolution
        kept = [m.reshape(-1, r, r, m.shape[-1]) for place in ("up", "down", "mid")
                for m in self.maps.get((place, is_cross), [])]
        stacked = torch.cat(kept, dim=0)
        return stacked.sum(0) / stacked.shape[0]


def forward_with_store(unet, latent, t, text):
    """One conditional UNet forward through diffusers' Attend-and-Excite processor, reporting to a fresh store."""
    module = pytest.importorskip(A_AND_E)
    store = PlaceStore(RESOLUTION)
    original = unet.attn_processors
    places = {"down_blocks": "down", "mid_block": "mid", "up_blocks": "up"}
    unet.set_attn_processor({name: module.AttendExciteAttnProcessor(store, places[name.split(".")[0]])
                             for name in original})
    try:
        unet(latent, t, encoder_hidden_states=text)
    finally:
        unet.set_attn_processor(original)
    return store


def smoothed(image):
    module = pytest.importorskip(A_AND_E)
    return module.GaussianSmoothing()(F.pad(image[None, None], (1, 1, 1, 1), mode="reflect"))[0, 0]


def otsu_level(image):
    """Otsu's threshold by its definition on the 8-bit levels floor(255·v): the first level t that maximises the
    between-class variance of {<= t} and {> t}."""
    levels = (image.detach().numpy() * 255).astype(np.int64).ravel()
    best, best_t = 0.0, 0
    for t in range(256):
        low, high = levels[levels <= t], levels[levels > t]
        if len(low) and len(high):
            variance = len(low) * len(high) / len(levels) ** 2 * (low.mean() - high.mean()) ** 2
            if variance > best:
                best, best_t = variance, t
    return best_t / 255


def peak_component(mask, start):
    """The 4-connected component of a 0/1 mask that holds ``start``, as a 0/1 mask."""
    region, todo = torch.zeros_like(mask), [start]
    while todo:
        x, y = todo.pop()
        if 0 <= x < mask.shape[0] and 0 <= y < mask.shape[1] and mask[x, y] == 1 and region[x, y] == 0:
            region[x, y] = 1
            todo += [(x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)]
    return region


def subject_terms(prepared, indices):
    """Per subject, in the authors' order: smoothed map, peak value and place, clean term. Returns the peak values,
    their places and the summed clean term."""
    values, places, clean = [], [], 0.0
    for i in indices:
        image = smoothed(prepared[:, :, i - 1])
        x, y = divmod(int(image.detach().reshape(-1).topk(1).indices[0]), image.shape[1])
        values.append(0 + image[x, y])
        places.append((x, y))
        region = peak_component(torch.where(image < otsu_level(image), 0.0, 1.0), (x, y))
        inside, outside = image * region + (1 - region), image * (1 - region)
        clean = clean + (outside.max() if outside.max() > inside.min() else outside.max() * 0)
    return values, places, clean


def conflict(self_maps, places):
    """Mean over subject pairs of sum(min(a, b)) / (sum(a + b) + 1e-6), a and b the smoothed self maps at the peaks."""
    r = self_maps.shape[0]
    maps = [smoothed(self_maps[x, y].reshape(r, r)) for x, y in places]
    total, pairs = 0, 0
    for i in range(len(maps)):
        for j in range(i + 1, len(maps)):
            total, pairs = total + torch.min(maps[i], maps[j]).sum() / ((maps[i] + maps[j]).sum() + 1e-6), pairs + 1
    return total / pairs


def response(values):
    """max over subjects of max(0, 1 - peak), the first maximum as Python's max picks it."""
    return max(torch.clamp(1.0 - v, min=0.0) for v in values)


def noise_loss(store, indices):
    """InitNO's noise-optimisation loss: cross + self + clean, the self term zero while cross > 0.5."""
    prepared = torch.softmax(store.aggregate(True)[:, :, 1:-1] * 100, dim=-1)
    values, places, clean = subject_terms(prepared, indices)
    cross = response(values)
    self_term = conflict(store.aggregate(False), places)
    if cross > 0.5:
        self_term = self_term * 0
    return cross + self_term + clean, cross, self_term


def guidance_loss(store, indices, cache):
    """InitNO's guidance loss: cross + 0.1 clean + 0.1 alignment + self; alignment is the L1 distance of each smoothed
    subject map to the smoothed running average (0.9 old, 0.1 new) of the prepared maps, smoothed anew."""
    prepared = torch.softmax(store.aggregate(True)[:, :, 1:-1] * 100, dim=-1)
    values, places, clean = subject_terms(prepared, indices)
    cross = response(values)
    new = prepared.detach().clone()
    cache[:] = [new] if not cache else [cache[0] * 0.9 + new * (1 - 0.9)]
    alignment = sum(torch.nn.L1Loss()(smoothed(prepared[:, :, i - 1]), smoothed(cache[0][:, :, i - 1]))
                    for i in indices)
    return cross + 0.1 * clean + 0.1 * alignment + conflict(store.aggregate(False), places)


def kl(log_var, mean):
    return -0.5 * torch.mean(1 + log_var - mean ** 2 - log_var.exp())


def reference_round(unet, t, z, text, indices, max_step):
    """One InitNO round: Adam (lr 1e-2, eps 1e-3) on z' = z·exp(½ log σ²) + μ; stop when cross < 0.2 and self < 0.3;
    after each step descend the KL to N(0, I) with the same optimiser until it is <= 1e-3."""
    log_var = torch.zeros_like(z).requires_grad_(True)
    mean = torch.zeros_like(z).requires_grad_(True)
    adam = torch.optim.Adam([log_var, mean], lr=1e-2, eps=1e-3)
    for _ in range(max_step):
        with torch.enable_grad():
            store = forward_with_store(unet, z * torch.exp(0.5 * log_var) + mean, t, text)
            joint, cross, self_term = noise_loss(store, indices)
            if cross < 0.2 and self_term < 0.3:
                break
            adam.zero_grad()
            joint.backward()
            adam.step()
            divergence = kl(log_var, mean)
            while divergence > 1e-3:
                adam.zero_grad()
                divergence.backward()
                adam.step()
                divergence = kl(log_var, mean)
    return (z * torch.exp(0.5 * log_var) + mean).detach()


def test_initno_noise_optimisation_equals_the_authors_formulas_bit_for_bit(toy):
    unet, t = toy.unet, toy.fresh_scheduler().timesteps[0]
    text = toy.encode_prompts([PROMPT])["embeds"][1:]
    for seed in (0, 1):
        z = seeded(toy, seed)
        store = AttentionStore(RESOLUTION)
        with attach_store(unet, store):
            ours = optimize_noise(unet, t, z, text, INDICES, store, Counter(), max_step=4)
        theirs = reference_round(unet, t, z, text, INDICES, max_step=4)
        assert ours.steps == 4 and not torch.equal(ours.latent, z)  # every step taken, the latent moved
        assert torch.equal(ours.latent, theirs), float((ours.latent - theirs).abs().max())


def test_initno_guidance_loss_gradient_equals_the_authors_formulas_bit_for_bit(toy):
    unet, timesteps = toy.unet, toy.fresh_scheduler().timesteps
    text = toy.encode_prompts([PROMPT])["embeds"][1:]
    ours_cache, their_cache = [], []
    for step, seed in ((10, 4), (11, 5)):  # the second forward uses the running average of the first
        latent = seeded(toy, seed).requires_grad_(True)
        store = AttentionStore(RESOLUTION)
        with attach_store(unet, store), torch.enable_grad():
            with recording(store):
                unet(latent, timesteps[step], encoder_hidden_states=text)
            loss = initno_guidance_loss(store.aggregate("cross"), store.aggregate("self"), INDICES, ours_cache).joint
            (ours,) = torch.autograd.grad(loss, [latent])
        reference_latent = latent.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            reference = guidance_loss(forward_with_store(unet, reference_latent, timesteps[step], text), INDICES,
                                      their_cache)
            (theirs,) = torch.autograd.grad(reference, [reference_latent])
        assert torch.equal(loss.detach(), reference.detach())
        assert ours.abs().max() > 0 and torch.equal(ours, theirs), float((ours - theirs).abs().max())
