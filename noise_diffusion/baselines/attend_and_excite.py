"""Attend-and-Excite (Chefer et al., SIGGRAPH 2023): during the first denoising steps, move the latent so that every
subject token gets a strong cross-attention peak.

The loss is the cross-attention response loss ``max_i (1 − max(smoothed map_i))`` at 16×16
(:func:`~noise_diffusion.baselines.losses.attend_and_excite_loss`); the update ``x_t ← x_t − α_i ∇loss`` runs at the
first ``max_iter_to_alter = 25`` steps with ``α_i = 20·sqrt(linspace(1, 0.5, steps)[i])``; at steps 0, 10 and 20 it is
repeated (at most 20 times) until the loss is ≤ 1 − 0.05, 1 − 0.5 and 1 − 0.8 respectively. These are the defaults of
the authors' pipeline, kept in diffusers as ``StableDiffusionAttendAndExcitePipeline``.
"""

from __future__ import annotations

from typing import Sequence

from .attention import AttentionStore
from .guidance import Guidance
from .losses import attend_and_excite_loss

THRESHOLDS = {0: 0.05, 10: 0.5, 20: 0.8}


def attend_and_excite_guidance(
    indices: Sequence[int], max_iter_to_alter: int = 25, scale_factor: float = 20.0,
    thresholds: dict[int, float] | None = None,
) -> Guidance:
    thresholds = dict(THRESHOLDS if thresholds is None else thresholds)

    def losses(store: AttentionStore) -> dict:
        return {"cross": attend_and_excite_loss(store.aggregate("cross"), indices)}

    def reached(step: int, found: dict) -> bool:
        return not bool(found["cross"] > 1.0 - thresholds[step])

    return Guidance(
        losses=losses, reached=reached, refine_steps=sorted(thresholds), refine_with="cross", update_with="cross",
        max_iter_to_alter=max_iter_to_alter, scale_factor=scale_factor,
    )
