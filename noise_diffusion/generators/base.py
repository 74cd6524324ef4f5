"""What the Noise Diffusion loop needs from a text-to-image model.

A generator turns a batch of standard-normal initial latents ``z`` into images in three stages, so that the
expensive part never has to be differentiated:

1. :meth:`Generator.sample` runs the ordinary guided sampler without gradients and records the model's guided
   prediction of every scheduler step (noise for DDPM-style models, velocity for flow matching);
2. :meth:`Generator.replay` runs only the scheduler steps again from ``z`` with the recorded predictions held fixed,
   through a fresh scheduler, so that the final latent is a differentiable (affine) function of ``z``;
3. :meth:`Generator.decode` maps final latents to images ``[B, 3, H, W]`` in ``[0, 1]``.

``z`` is always standard normal: a model whose scheduler scales the initial noise (``init_noise_sigma``) applies that
scale inside ``sample`` and ``replay``, so that the Noise Diffusion update keeps its meaning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import torch
from torch import Tensor


@dataclass
class Sampled:
    """The result of one sampling pass: final latents (no gradient) and the recorded model predictions."""

    latents: Tensor
    record: list[Tensor]


class Generator(Protocol):
    """Interface of a text-to-image model for the loop. See the module docstring."""

    #: device and dtype of the diffusion model
    device: torch.device
    dtype: torch.dtype
    #: short description recorded in results
    name: str

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one initial latent, without the batch dimension."""

    @property
    def model_evals_per_generation(self) -> int:
        """Network evaluations (per image) that one sampling pass costs; with CFG, both halves count."""

    def encode_prompts(self, prompts: Sequence[str]) -> Any:
        """Encode the prompts (with the unconditional branch for guidance); the result is passed back to ``sample``."""

    def sample(self, z: Tensor, conditioning: Any) -> Sampled:
        """Sample from ``z`` without gradients and record the guided prediction of every step."""

    def replay(self, z: Tensor, record: list[Tensor]) -> Tensor:
        """Differentiable final latents from ``z`` with the recorded predictions held fixed."""

    def decode(self, latents: Tensor) -> Tensor:
        """Latents to images ``[B, 3, H, W]`` in [0, 1] (differentiable)."""

    def settings(self) -> dict:
        """The generation settings, for the result record."""


def initial_latents(shape: Sequence[int], seeds: Sequence[int]) -> Tensor:
    """Standard-normal initial latents, one per seed, each drawn from a CPU generator seeded with its seed.

    Drawing on the CPU makes the initial image of a seed the same on every device (as diffusers does when it is
    handed a CPU generator).
    """
    return torch.stack([torch.randn(tuple(shape), generator=torch.Generator("cpu").manual_seed(int(s))) for s in seeds])
