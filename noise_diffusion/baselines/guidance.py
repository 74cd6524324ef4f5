"""Attention-guided denoising, shared by Attend-and-Excite and InitNO: a step hook of the generator's own sampler.

At each of the first ``max_iter_to_alter`` steps the latent is moved down the gradient of an attention loss before the
ordinary classifier-free-guided step: one conditional UNet forward with gradients fills the attention store, the loss
is computed from it, and ``x_t ← x_t − α_i ∇loss`` with ``α_i = scale_factor · sqrt(linspace(1, 0.5, steps)[i])``. At
the refinement steps (e.g. 0, 10 and 20) the update is first repeated until the loss meets its target, at most
``max_refinement_steps`` times, followed by one forward to measure the refined latent. This is what both
original pipelines do; their extra forwards after the last altered step change nothing and are skipped here. The
classifier-free-guided step itself is the generator's (:meth:`~noise_diffusion.generators.base.DiffusersGenerator.denoise`
with its ``guided`` model), so the baselines have no denoising loop of their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from .attention import AttentionStore, recording


@dataclass
class Counter:
    """UNet evaluations of one generation: forwards per image (both halves of guidance count) and backwards."""

    forwards: int = 0
    backwards: int = 0


@dataclass
class Guidance:
    """What distinguishes one attention-guided method from another.

    ``losses(store)`` returns named losses of the recorded forward; ``reached(i, losses)`` says whether refinement at
    step ``i`` has met its target; ``refine_with`` names the loss descended during refinement and ``update_with`` the one
    of the per-step update.
    """

    losses: Callable[[AttentionStore], dict[str, Tensor]]
    reached: Callable[[int, dict[str, Tensor]], bool]
    refine_steps: Sequence[int]
    refine_with: str
    update_with: str
    max_iter_to_alter: int = 25
    scale_factor: float = 20.0
    max_refinement_steps: int = 20


@dataclass
class GuidedInfo:
    guided_steps: int = 0
    refinement_iterations: int = 0
    final_losses: dict = field(default_factory=dict)


def step_sizes(scale_factor: float, num_timesteps: int) -> np.ndarray:
    return scale_factor * np.sqrt(np.linspace(1.0, 0.5, num_timesteps))


def guided_sample(
    generator, z: Tensor, conditioning, store: AttentionStore, guidance: Guidance, counter: Counter
) -> tuple[Tensor, GuidedInfo]:
    """The generator's own classifier-free-guided sampler from standard-normal ``z``, with ``guidance`` moving the
    latent before each of its first steps (a :meth:`denoise` step hook). ``store`` must be attached to the generator's
    UNet. Returns the final latents and what the guidance did."""
    info = GuidedInfo()
    sizes = step_sizes(guidance.scale_factor, len(generator.fresh_scheduler().timesteps))
    move = attention_step(generator.unet, conditioning["embeds"][1:], store, guidance, counter, sizes, info)
    predict = generator.guided(conditioning)

    def counted(model_input: Tensor, t, i: int) -> Tensor:
        counter.forwards += 2 if generator.do_cfg else 1
        return predict(model_input, t, i)

    with torch.no_grad():
        latents = generator.denoise(z, counted, before_step=move)
    return latents, info


def attention_step(unet, text: Tensor, store: AttentionStore, guidance: Guidance, counter: Counter,
                   sizes: np.ndarray, info: GuidedInfo):
    """The step hook of attention guidance: at step ``i`` it returns the latent moved down the attention loss
    (refined first at the refinement steps), or the latent as it is after the first ``max_iter_to_alter`` steps.
    ``text`` is the prompt's embedding ``[1, L, D]``."""
    refine_steps = set(guidance.refine_steps)

    def measure(latent: Tensor, t) -> tuple[Tensor, dict[str, Tensor]]:
        latent = latent.detach().requires_grad_(True)
        with torch.enable_grad(), recording(store):
            unet(latent, t, encoder_hidden_states=text, return_dict=False)
            losses = guidance.losses(store)
        counter.forwards += 1
        return latent, losses

    def descend(latent: Tensor, loss: Tensor, size: float) -> tuple[Tensor, bool]:
        """One gradient step on ``loss`` (none when the loss is zero, as in the originals)."""
        if not loss.requires_grad or float(loss.detach()) == 0:
            return latent.detach(), False
        (grad,) = torch.autograd.grad(loss, [latent])
        counter.backwards += 1
        return (latent - size * grad).detach(), True

    def before_step(latents: Tensor, t, i: int) -> Tensor:
        altered = i < guidance.max_iter_to_alter
        if not (altered or i in refine_steps):
            return latents
        latent, losses = measure(latents, t)
        if i in refine_steps and not guidance.reached(i, losses):
            for _ in range(guidance.max_refinement_steps):
                latent, losses = measure(latent, t)
                latent, _ = descend(latent, losses[guidance.refine_with], sizes[i])
                info.refinement_iterations += 1
                # the originals test the loss of the latent *before* this update, then re-measure after the loop
                if guidance.reached(i, losses):
                    break
            latent, losses = measure(latent, t)
        if altered:
            latent, moved = descend(latent, losses[guidance.update_with], sizes[i])
            info.guided_steps += int(moved)
        info.final_losses = {k: float(v.detach()) for k, v in losses.items()}
        return latent.detach()

    return before_step
