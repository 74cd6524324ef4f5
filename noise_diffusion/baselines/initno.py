"""InitNO (Guo et al., CVPR 2024): optimise the initial noise until its attention maps look right, then sample.

1. **Noise optimisation** (:func:`optimize_noise`). The initial latent ``z`` is reparametrised per element as
   ``z' = z·exp(0.5·log σ²) + μ`` with ``μ = log σ² = 0``. Each step runs the UNet once on ``z'`` at the first
   timestep with the prompt (no guidance), reads the 16×16 cross- and self-attention maps, and descends
   cross + self + clean (:func:`~noise_diffusion.baselines.losses.initno_noise_loss`) with Adam (lr 1e-2, eps 1e-3);
   after every step Adam keeps descending the KL divergence of N(μ, σ²) from N(0, 1) until it is ≤ 0.001, so ``z'``
   stays close to the prior. The optimisation succeeds, and stops, when the cross loss is < 0.2 and the self loss < 0.3.
2. **Restarts** (:func:`initno_latents`). Up to 5 rounds of 10 steps, each from a fresh Gaussian ``z``; the first
   success ends the search. Rounds are ranked by cross + self loss of their last measured step (a zero self loss counts
   as 1). When the best-ranked round did not succeed, 50 more steps are run from its *initial* ``z``.
3. **Sampling.** The ``initno`` method denoises the optimised latent with InitNO's attention guidance during the
   first 25 steps (the authors' ``run_sd=False``, as the Noise Diffusion paper ran it): the per-step update descends the
   cross loss; refinement at steps 10 and 20 descends cross + self + 0.1·clean + 0.1·alignment until cross ≤ 0.2 and
   self ≤ 0.3. ``initno_noise_only`` (ablation) samples the optimised latent with the plain sampler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from .attention import AttentionStore, recording
from .guidance import Counter, Guidance
from .losses import initno_guidance_loss, initno_noise_loss, kl_to_standard_normal

#: InitNO's settings (the authors' pipeline defaults)
LEARNING_RATE = 1e-2
ADAM_EPS = 1e-3
KL_LIMIT = 1e-3
TAU_CROSS = 0.2
TAU_SELF = 0.3
ROUNDS = 5
ROUND_STEPS = 10
FINAL_STEPS = 50
REFINE_STEPS = (10, 20)


@dataclass
class NoiseResult:
    latent: Tensor  # optimised z', detached
    succeeded: bool
    score: float  # cross + self of the last measured step (self 0 counts as 1): the rank of a round
    cross: float
    self_: float
    steps: int  # optimiser steps taken
    log_var: Tensor | None = None  # the final reparametrisation, z' = z·exp(0.5·log_var) + mean
    mean: Tensor | None = None


def optimize_noise(
    unet, timestep, z: Tensor, text: Tensor, indices: Sequence[int], store: AttentionStore, counter: Counter,
    max_step: int,
) -> NoiseResult:
    """One InitNO round from ``z`` (already scaled by the scheduler's initial sigma); ``text`` is the prompt's
    embedding ``[1, L, D]`` and ``store`` is attached to ``unet``."""
    z = z.detach()
    log_var = torch.zeros_like(z, requires_grad=True)
    mean = torch.zeros_like(z, requires_grad=True)
    optimizer = torch.optim.Adam([log_var, mean], lr=LEARNING_RATE, eps=ADAM_EPS)
    succeeded, steps = False, 0
    cross = self_ = torch.zeros(())
    with torch.enable_grad():
        for _ in range(max_step):
            candidate = z * torch.exp(0.5 * log_var) + mean
            with recording(store):
                unet(candidate, timestep, encoder_hidden_states=text, return_dict=False)
            counter.forwards += 1
            losses = initno_noise_loss(store.aggregate("cross"), store.aggregate("self"), indices)
            cross, self_ = losses.cross.detach(), losses.self_.detach()
            if cross < TAU_CROSS and self_ < TAU_SELF:
                succeeded = True
                break
            optimizer.zero_grad()
            losses.joint.backward()
            counter.backwards += 1
            optimizer.step()
            steps += 1
            kl = kl_to_standard_normal(log_var, mean)
            while kl > KL_LIMIT:  # pull N(μ, σ²) back towards the prior, with the same optimiser state
                optimizer.zero_grad()
                kl.backward()
                optimizer.step()
                kl = kl_to_standard_normal(log_var, mean)
    with torch.no_grad():
        latent = z * torch.exp(0.5 * log_var) + mean
    self_rank = float(self_) + 1.0 if float(self_) <= 1e-6 else float(self_)
    return NoiseResult(latent.detach(), succeeded, float(cross) + self_rank, float(cross), float(self_), steps,
                       log_var.detach(), mean.detach())


@dataclass
class InitNOInfo:
    rounds: int
    succeeded: bool
    chosen_round: int
    extra_steps: int
    cross: float
    self_: float

    def record(self) -> dict:
        return {"rounds": self.rounds, "succeeded": self.succeeded, "chosen_round": self.chosen_round,
                "extra_steps": self.extra_steps, "cross_loss": self.cross, "self_loss": self.self_}


def initno_latents(
    unet, timestep, z: Tensor, draw_fresh, text: Tensor, indices: Sequence[int], store: AttentionStore,
    counter: Counter, rounds: int | None = None, round_steps: int | None = None, final_steps: int | None = None,
    optimize=optimize_noise,
) -> tuple[Tensor, InitNOInfo]:
    """The restart loop around :func:`optimize_noise`; ``draw_fresh()`` gives the next round's initial latent.

    ``rounds``, ``round_steps`` and ``final_steps`` default to InitNO's 5, 10 and 50 (this module's constants, read at
    call time). ``optimize`` is the per-round optimiser (replaceable, e.g. by a stub in tests).
    """
    rounds = ROUNDS if rounds is None else rounds
    round_steps = ROUND_STEPS if round_steps is None else round_steps
    final_steps = FINAL_STEPS if final_steps is None else final_steps
    pool = []
    for index in range(rounds):
        result = optimize(unet, timestep, z, text, indices, store, counter, round_steps)
        pool.append((result.score, index, result, z))
        if result.succeeded:
            break
        if index + 1 < rounds:  # the authors also draw after the last round; nothing uses that draw
            z = draw_fresh()
    pool.sort(key=lambda item: (item[0], item[1]))
    _, chosen, best, base = pool[0]
    if best.succeeded:
        return best.latent, InitNOInfo(len(pool), True, chosen, 0, best.cross, best.self_)
    final = optimize(unet, timestep, base, text, indices, store, counter, final_steps)
    return final.latent, InitNOInfo(len(pool), False, chosen, final.steps, final.cross, final.self_)


def initno_guidance(max_iter_to_alter: int = 25, scale_factor: float = 20.0, indices: Sequence[int] = ()) -> Guidance:
    """InitNO's attention guidance during denoising (``run_sd=False``)."""
    cache: list = []  # the exponential moving average of the cross maps, per generation

    def losses(store: AttentionStore) -> dict:
        result = initno_guidance_loss(store.aggregate("cross"), store.aggregate("self"), indices, cache)
        return {"joint": result.joint, "cross": result.cross, "self": result.self_, "clean": result.clean}

    def reached(step: int, found: dict) -> bool:
        return bool(found["cross"] <= 1.0 - 0.8) and bool(found["self"] <= TAU_SELF)

    return Guidance(
        losses=losses, reached=reached, refine_steps=[s for s in REFINE_STEPS if s < max_iter_to_alter],
        refine_with="joint", update_with="cross", max_iter_to_alter=max_iter_to_alter, scale_factor=scale_factor,
    )
