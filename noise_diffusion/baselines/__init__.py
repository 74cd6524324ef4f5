"""Attention-based baselines the paper compares against, as methods of the same loop and result format.

- ``initno`` — InitNO (Guo et al., CVPR 2024): initial-noise optimisation, then sampling with its attention guidance
  during the first 25 steps (as the Noise Diffusion paper ran it);
- ``initno_noise_only`` — ablation: InitNO's optimised noise, sampled by the plain sampler;
- ``attend_and_excite`` — Attend-and-Excite (Chefer et al., SIGGRAPH 2023): attention guidance alone.

Each makes one image per (prompt, seed) from the seed's initial latent, scored once by the verifier; the result has a
single epoch (initial = best). They need a Stable Diffusion 1.x/2.x-style generator (a UNet with cross-attention and a
CLIP tokenizer: SD checkpoints and the toy world) and the subject tokens of each prompt
(:mod:`~noise_diffusion.baselines.tokens`). Compute records count UNet forwards per image (both halves of
classifier-free guidance) in ``model_evals`` and backwards through the UNet in ``model_backwards``; the record's
``seconds`` is the run's wall time.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import torch
from torch import Tensor

from ..errors import UserError
from ..search_state import ItemProgress
from .attend_and_excite import attend_and_excite_guidance
from .attention import AttentionStore, attach_store, default_resolution
from .guidance import Counter, guided_sample
from .initno import initno_guidance, initno_latents
from .tokens import check_indices, subject_token_indices

#: the methods of this package (described in :data:`noise_diffusion.methods.METHODS`)
BASELINES = ("initno", "initno_noise_only", "attend_and_excite")


def check_generator(generator) -> None:
    if getattr(generator, "family", None) != "stable-diffusion" or not hasattr(generator, "tokenizer"):
        raise UserError(f"the attention baselines need a Stable Diffusion 1.x/2.x-style model (UNet with "
                        f"cross-attention and a CLIP tokenizer); {getattr(generator, 'name', generator)!r} is not one")


def resolve_token_indices(generator, prompts: Sequence[str], token_indices: Sequence | None) -> list[list[int]]:
    """Per prompt: the given indices (checked), or the subjects' token positions computed from the prompt."""
    given = list(token_indices) if token_indices is not None else [None] * len(prompts)
    if len(given) != len(prompts):
        raise UserError(f"give one list of token indices per prompt ({len(prompts)}), got {len(given)}")
    return [check_indices(generator.tokenizer, p, i) if i else subject_token_indices(generator.tokenizer, p)
            for p, i in zip(prompts, given)]


def generate(
    method: str,
    generator,
    prompt: str,
    indices: Sequence[int],
    z: Tensor,
    draw_fresh: Callable[[], Tensor],
    *,
    attention_res: int | None = None,
    max_iter_to_alter: int = 25,
) -> tuple[Tensor, Tensor, dict, Counter]:
    """One image of ``method`` from the standard-normal latent ``z`` ``[1, *latent_shape]``.

    ``draw_fresh()`` gives a new standard-normal latent (InitNO's restarts). Returns the image ``[1, 3, H, W]`` in
    [0, 1], the (optimised) initial latent, what the method did, and its UNet evaluations.
    """
    unet, device = generator.unet, generator.device
    scheduler = generator.fresh_scheduler()
    sigma = scheduler.init_noise_sigma
    conditioning = generator.encode_prompts([prompt])
    text = conditioning["embeds"][1:]  # the prompt's row (the unconditional one comes first)
    resolution = attention_res or default_resolution(unet, generator.latent_shape[-1])
    kinds = ("cross",) if method == "attend_and_excite" else ("cross", "self")
    store = AttentionStore(resolution, kinds)
    counter = Counter()
    info: dict = {"token_indices": list(indices), "attention_res": resolution}
    start = z.to(device, generator.dtype) * sigma
    with attach_store(unet, store):
        if method in ("initno", "initno_noise_only"):
            def fresh() -> Tensor:
                return draw_fresh().to(device, generator.dtype) * sigma

            start, found = initno_latents(unet, scheduler.timesteps[0], start, fresh, text, indices, store, counter)
            info["initno"] = found.record()
        if method == "initno_noise_only":
            with torch.no_grad():  # the plain sampler (the attention store is attached but not recording)
                latents = generator.sample(start / sigma, conditioning).latents
            counter.forwards += 2 * len(scheduler.timesteps)
        else:
            guidance = (attend_and_excite_guidance(indices, max_iter_to_alter) if method == "attend_and_excite"
                        else initno_guidance(max_iter_to_alter, indices=indices))
            latents, guided = guided_sample(generator, start / sigma, conditioning, store, guidance, counter)
            info.update(guided_steps=guided.guided_steps, refinement_iterations=guided.refinement_iterations,
                        max_iter_to_alter=max_iter_to_alter)
    with torch.no_grad():
        image = generator.decode(latents)
    return image, (start / sigma).detach(), info, counter


def run_baseline(
    method: str,
    generator,
    verifier,
    prompts: Sequence[str],
    seeds: Sequence[int],
    token_indices: Sequence | None = None,
    *,
    initial: Tensor | None = None,
    progress: bool = False,
    on_epoch=None,
    attention_res: int | None = None,
    max_iter_to_alter: int = 25,
):
    """Run a baseline for each (prompt, seed); returns one :class:`~noise_diffusion.search_state.ItemProgress` each."""
    from tqdm.auto import tqdm

    if method not in BASELINES:
        raise UserError(f"unknown baseline {method!r}; choose from {', '.join(BASELINES)}")
    check_generator(generator)
    indices = resolve_token_indices(generator, prompts, token_indices)
    shape = tuple(generator.latent_shape)
    results = []
    for item, (prompt, seed) in enumerate(tqdm(list(zip(prompts, seeds)), disable=not progress, desc=method,
                                               leave=False)):
        started = time.perf_counter()
        draws = torch.Generator("cpu").manual_seed(int(seed))  # the seed's initial latent, then InitNO's restarts
        z = torch.randn(shape, generator=draws)[None]
        if initial is not None:
            z = initial[item:item + 1].detach().float().cpu()
        image, latent, info, counter = generate(
            method, generator, prompt, indices[item], z, lambda: torch.randn(shape, generator=draws)[None],
            attention_res=attention_res, max_iter_to_alter=max_iter_to_alter,
        )
        with torch.no_grad():
            score = float(verifier(image, [prompt]).float()[0])
        seconds = time.perf_counter() - started
        image = image[0].float().cpu()
        record = {"epoch": 0, "score": score, "accepted": True, "seconds": seconds, method: info}
        result = ItemProgress(prompt, int(seed), image, score, image, latent[0].float().cpu(), score, 0, [record])
        result.compute = {"generations": 1, "model_evals": counter.forwards, "model_backwards": counter.backwards,
                          "verifier_forward": 1, "verifier_backward": 0}
        result.seconds = seconds
        if on_epoch:
            on_epoch(item, 0, image, record)
        results.append(result)
    return results
