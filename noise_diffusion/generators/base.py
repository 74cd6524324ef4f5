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


class DiffusersGenerator:
    """Plumbing shared by the generators built on a diffusers pipeline.

    A subclass sets ``pipe``, ``denoiser`` (UNet or transformer), ``vae``, ``scheduler_class``, ``scheduler_config``,
    ``num_steps``, ``guidance_scale``, ``do_cfg``, ``height``, ``width``, ``vae_scale``, ``memory``, ``name`` and
    ``_device``, and implements ``encode_prompts`` and ``sample``; it may override the hooks ``_set_timesteps``,
    ``_start`` (scale or pack ``z``) and ``_finish`` (unpack).
    """

    family = "diffusers"

    @property
    def device(self) -> torch.device:
        # kept explicitly: under model CPU offload the modules themselves report "cpu"
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self.denoiser.dtype

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.denoiser.config.in_channels, self.height // self.vae_scale, self.width // self.vae_scale)

    @property
    def model_evals_per_generation(self) -> int:
        return (2 if self.do_cfg else 1) * len(self._fresh_scheduler().timesteps)

    def settings(self) -> dict:
        return {
            "model": self.name,
            "family": self.family,
            "scheduler_class": self.scheduler_class.__name__,
            "num_steps": self.num_steps,
            "guidance_scale": self.guidance_scale,
            "height": self.height,
            "width": self.width,
            "dtype": str(self.dtype).removeprefix("torch."),
            **self.memory,
        }

    def _configure(
        self, *, height: int | None, width: int | None, sample_size: int, multiple: int = 1,
        memory: dict | None, compile: bool, name: str,
    ) -> None:
        """The end of every subclass's ``__init__``: image size (default ``sample_size`` latents, a multiple of
        ``multiple`` latent cells), memory record, optional ``torch.compile`` of the denoiser, name."""
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        default_size = sample_size * self.vae_scale
        self.height, self.width = height or default_size, width or default_size
        check_size(self.height, self.width, multiple * self.vae_scale)
        self.memory = memory or {}
        if compile:  # worth it on long GPU runs; the first generations pay the compilation
            self.denoiser = torch.compile(self.denoiser)
        self.name = name

    # -- hooks ----------------------------------------------------------------------------------------------------
    def _set_timesteps(self, scheduler) -> None:
        scheduler.set_timesteps(self.num_steps, device=self.device)

    def _start(self, z: Tensor, scheduler) -> Tensor:
        """The sampler's first latent from standard-normal ``z``: the scheduler's initial noise scale is applied here,
        never to ``z``, so the Noise Diffusion update keeps its meaning."""
        return z.to(self.device, self.dtype) * scheduler.init_noise_sigma

    def _finish(self, latents: Tensor) -> Tensor:
        return latents

    # -- shared stages --------------------------------------------------------------------------------------------
    def _fresh_scheduler(self):
        """A new scheduler for every pass: some (PNDM, Euler) keep state between steps."""
        scheduler = self.scheduler_class.from_config(self.scheduler_config)
        self._set_timesteps(scheduler)
        return scheduler

    def replay(self, z: Tensor, record: list[Tensor]) -> Tensor:
        """The scheduler steps from ``z`` with the recorded predictions held fixed: differentiable, no model call."""
        scheduler = self._fresh_scheduler()
        if len(record) != len(scheduler.timesteps):
            raise ValueError(f"record has {len(record)} steps, the scheduler {len(scheduler.timesteps)}")
        latents = self._start(z, scheduler)
        # Euler-type schedulers expect scale_model_input before each step (bookkeeping only: its output is not needed)
        scale_input = getattr(scheduler, "scale_model_input", None) if hasattr(scheduler, "is_scale_input_called") else None
        for t, prediction in zip(scheduler.timesteps, record):
            if scale_input is not None:
                scale_input(latents.detach(), t)
            latents = scheduler.step(prediction, t, latents, return_dict=False)[0]
        return self._finish(latents)

    def decode(self, latents: Tensor) -> Tensor:
        return decode_latents(self.vae, latents)


def decode_latents(vae, latents: Tensor) -> Tensor:
    """Undo the latent normalisation of ``vae`` — per-channel mean/std when its config has them (SDXL-style), else the
    scaling *and* shift factors (SD1.x/2.x have no shift; SD3 and FLUX do) — decode, and map to [0, 1]."""
    config = vae.config
    latents = latents.to(vae.dtype)
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None:
        shape = (1, len(mean), 1, 1)
        mean = torch.tensor(mean, device=latents.device, dtype=latents.dtype).view(shape)
        std = torch.tensor(std, device=latents.device, dtype=latents.dtype).view(shape)
        latents = latents * std / config.scaling_factor + mean
    else:
        latents = latents / config.scaling_factor + (getattr(config, "shift_factor", None) or 0.0)
    images = vae.decode(latents, return_dict=False)[0]
    return (images.float() / 2 + 0.5).clamp(0, 1)


def unet_scheduler(pipe_scheduler, choice: str):
    """Scheduler class and config for an epsilon-prediction UNet: ``"ddim"`` (η = 0, built from the checkpoint's config
    with ``clip_sample`` forced off — clipping x0 inside the step would zero the replay gradient) or ``"default"``
    (the checkpoint's own, which must be deterministic)."""
    from diffusers import DDIMScheduler

    if choice == "ddim":
        return DDIMScheduler, DDIMScheduler.from_config(pipe_scheduler.config, clip_sample=False).config
    if choice == "default":
        if pipe_scheduler.config.get("s_churn", 0.0):
            raise ValueError("the checkpoint's scheduler adds noise (s_churn > 0); the replay needs a deterministic one")
        return type(pipe_scheduler), pipe_scheduler.config
    raise ValueError(f"unknown scheduler {choice!r}; choose from ddim, default")


def check_size(height: int, width: int, multiple: int) -> None:
    if height % multiple or width % multiple:
        raise ValueError(f"height and width must be multiples of {multiple}, got {height}x{width}")
