"""FLUX.1 (``FluxPipeline`` checkpoints: -schnell and -dev) as a Noise Diffusion generator.

FLUX is a rectified-flow transformer like SD3, with two differences that matter here:

- **Packed latents.** The transformer sees the latent as a sequence of 2x2 patches (``[B, H/16 * W/16, 4C]`` at the
  image's scale). ``z`` and every latent this generator returns are *unpacked*, ``[C, H/8, W/8]`` (C = 16 for the real
  VAE), the layout the Noise Diffusion update and the VAE work in; packing happens inside the denoising loop.
  Packing is a permutation, so ``z`` packed is still standard normal and the replay gradient is unchanged by it.
- **No classifier-free guidance.** FLUX.1-dev is guidance-distilled: ``guidance_scale`` is fed to the transformer as
  an embedding (one model evaluation per step). FLUX.1-schnell has no guidance input at all (``guidance_embeds``
  false in its config); ``guidance_scale`` is then recorded as 0 and unused. A negative prompt is not supported.

The timesteps are those of ``FluxPipeline``: sigmas ``linspace(1, 1/n, n)`` and, when the checkpoint's scheduler asks
for dynamic shifting (dev), the resolution-dependent shift ``mu`` computed from the packed sequence length. The initial
noise is not scaled (sigma_max = 1), so ``z`` enters unchanged. With the velocity held fixed each flow-matching Euler
step is affine with coefficient 1: the replayed gradient equals the gradient at the final latent.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError
from .base import Conditioning, DiffusersGenerator, register_generator
from .placement import place_t5
from .schedulers import flow_scheduler, resolution_shift
from .settings import MemoryOptions, Sampling

#: recommended settings per variant (chosen by the transformer's ``guidance_embeds``) where the caller gives none:
#: schnell: 4 steps without guidance (its model card); dev: diffusers' FluxPipeline defaults, 28 steps with distilled
#: guidance 3.5 (the dev model card shows 50 steps; pass num_steps=50 for that).
VARIANT_SAMPLING = {"schnell": Sampling(num_steps=4, guidance_scale=0.0), "dev": Sampling(num_steps=28, guidance_scale=3.5)}
#: T5 tokens per variant, as FluxPipeline's defaults
VARIANT_MAX_SEQUENCE_LENGTH = {"schnell": 256, "dev": 512}


@register_generator
class FluxGenerator(DiffusersGenerator):
    """FLUX transformer + VAE + CLIP-L (pooled) + T5-XXL, one transformer call per step."""

    pipeline = "FluxPipeline"
    family = "flux"
    aliases = {"flux.1-schnell": "black-forest-labs/FLUX.1-schnell", "flux.1-dev": "black-forest-labs/FLUX.1-dev"}
    LABEL = "FLUX.1"
    #: common to both variants; steps and guidance come from :data:`VARIANT_SAMPLING`
    SAMPLING = Sampling(height=1024, width=1024, scheduler="default")
    #: the published weights are bf16; T5-XXL overflows in float16
    PREFERRED_DTYPE = "bfloat16"
    #: guidance distillation: one transformer call per step
    do_cfg = False

    def __init__(
        self,
        pipe,
        sampling: Sampling = Sampling(),
        *,
        negative_prompt: str | None = "",
        max_sequence_length: int | None = None,
        t5_device: str | torch.device | None = None,
        device: str | torch.device = "cpu",
        memory: MemoryOptions | None = None,
        name: str = "flux",
    ) -> None:
        """``t5_device``: run T5 there (FluxPipeline's encoders run where their weights are, so moving it is all)."""
        if negative_prompt:
            raise UserError("FLUX uses guidance distillation, not classifier-free guidance: no negative prompt")
        self.negative_prompt = ""
        self.guidance_embeds = bool(pipe.transformer.config.guidance_embeds)
        self.variant = self.variant_of(pipe)
        self.max_sequence_length = int(max_sequence_length or VARIANT_MAX_SEQUENCE_LENGTH[self.variant])
        self._setup(pipe, pipe.transformer, sampling, device=device, memory=memory, name=name)
        if not self.guidance_embeds:  # schnell has no guidance input: recorded as 0
            self.guidance_scale = 0.0
        place_t5(pipe.text_encoder_2, t5_device, self.memory)
        self.t5_placement = None if t5_device is None else str(t5_device)

    @staticmethod
    def variant_of(pipe) -> str:
        return "dev" if pipe.transformer.config.guidance_embeds else "schnell"

    @classmethod
    def family_sampling(cls, pipe) -> Sampling:
        return VARIANT_SAMPLING[cls.variant_of(pipe)].over(cls.SAMPLING)

    @classmethod
    def recommended(cls) -> dict[str, Sampling]:
        return {f"{cls.LABEL}-{variant}": sampling.over(cls.SAMPLING) for variant, sampling in VARIANT_SAMPLING.items()}

    def _schedulers(self, pipe_scheduler, choice: str):
        return flow_scheduler(pipe_scheduler, choice)

    def size_multiple(self) -> int:
        return 2  # the 2x2 packing needs even latent sizes

    @property
    def transformer(self):
        return self.denoiser

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """The unpacked latent ``[C, H/8, W/8]`` (see the module docstring)."""
        return (self.transformer.config.in_channels // 4, self.height // self.vae_scale, self.width // self.vae_scale)

    def settings(self) -> dict:
        return {
            **super().settings(),
            "t5_device": self.t5_placement,
            "variant": self.variant,
            "scheduler": "flow-match-euler",
            "guidance": "distilled" if self.guidance_embeds else "none",
            "max_sequence_length": self.max_sequence_length,
        }

    def _set_timesteps(self, scheduler) -> None:
        n, (_, h, w) = self.num_steps, self.latent_shape
        mu = resolution_shift(scheduler, (h // 2) * (w // 2), max_shift=1.15)  # the packed sequence length
        if scheduler.config.get("use_flow_sigmas"):
            scheduler.set_timesteps(n, device=self.device, mu=mu)
        else:
            scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / n, n), device=self.device, mu=mu)

    def _start(self, z: Tensor, scheduler) -> Tensor:
        # no initial noise scale (sigma_max = 1); packing is a permutation, so packed z is still standard normal
        from diffusers import FluxPipeline

        batch, channels, height, width = z.shape
        return FluxPipeline._pack_latents(z.to(self.device, self.dtype), batch, channels, height, width)

    def _finish(self, latents: Tensor) -> Tensor:
        from diffusers import FluxPipeline

        return FluxPipeline._unpack_latents(latents, self.height, self.width, self.vae_scale)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """``embeds [B, L, D]`` (T5) and ``pooled [B, P]`` (CLIP) from ``FluxPipeline.encode_prompt``."""
        embeds, pooled, _ = self.pipe.encode_prompt(
            prompt=list(prompts), prompt_2=None, device=self.device, max_sequence_length=self.max_sequence_length
        )
        return Conditioning({"embeds": embeds.to(self.dtype), "pooled": pooled.to(self.dtype)}, cfg=False)

    def model_output(self, model_input: Tensor, t: Tensor, conditioning: Conditioning) -> Tensor:
        from diffusers import FluxPipeline

        batch = model_input.shape[0]
        _, h, w = self.latent_shape
        image_ids = FluxPipeline._prepare_latent_image_ids(batch, h // 2, w // 2, self.device, self.dtype)
        text_ids = torch.zeros(conditioning["embeds"].shape[1], 3, device=self.device, dtype=self.dtype)
        guidance = (
            torch.full((batch,), self.guidance_scale, device=self.device, dtype=torch.float32)
            if self.guidance_embeds else None
        )
        return self.denoiser(
            hidden_states=model_input, timestep=t.expand(batch).to(model_input.dtype) / 1000, guidance=guidance,
            pooled_projections=conditioning["pooled"], encoder_hidden_states=conditioning["embeds"],
            txt_ids=text_ids, img_ids=image_ids, return_dict=False,
        )[0]
