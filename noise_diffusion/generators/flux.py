"""FLUX.1 (``FluxPipeline`` checkpoints: -schnell and -dev) as a Noise Diffusion generator.

FLUX is a rectified-flow transformer like SD3, with two differences that matter here:

- **Packed latents.** The transformer sees the latent as a sequence of 2x2 patches (``[B, H/16 * W/16, 4C]`` at the
  image's scale). ``z`` and every latent this generator returns are *unpacked*, ``[C, H/8, W/8]`` (C = 16 for the real
  VAE), the layout the Noise Diffusion update and the VAE work in; packing happens inside ``sample`` and ``replay``.
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

from .base import DiffusersGenerator, Sampled
from .placement import check_flow_scheduler_choice, memory_settings, place_pipeline

#: recommended settings per variant (chosen by the transformer's ``guidance_embeds``) where the caller passes None:
#: schnell: 4 steps without guidance (its model card); dev: diffusers' FluxPipeline defaults, 28 steps with distilled
#: guidance 3.5 (the dev model card shows 50 steps; pass num_steps=50 for that).
VARIANT_DEFAULTS = {
    "schnell": {"num_steps": 4, "guidance_scale": 0.0, "max_sequence_length": 256},
    "dev": {"num_steps": 28, "guidance_scale": 3.5, "max_sequence_length": 512},
}


class FluxGenerator(DiffusersGenerator):
    """FLUX transformer + VAE + CLIP-L (pooled) + T5-XXL, one transformer call per step."""

    family = "flux"
    #: common to both variants; steps and guidance come from :data:`VARIANT_DEFAULTS`
    DEFAULTS = {"height": 1024, "width": 1024}
    #: precision recommended on a GPU (the published weights are bf16; T5-XXL overflows in float16)
    PREFERRED_DTYPE = "bfloat16"

    def __init__(
        self,
        pipe,
        *,
        device: str | torch.device = "cpu",
        scheduler: str | None = "default",
        num_steps: int | None = None,
        guidance_scale: float | None = None,
        negative_prompt: str | None = "",
        height: int | None = None,
        width: int | None = None,
        max_sequence_length: int | None = None,
        memory: dict | None = None,
        compile: bool = False,
        name: str = "flux",
    ) -> None:
        from diffusers import FlowMatchEulerDiscreteScheduler

        check_flow_scheduler_choice(scheduler)
        if negative_prompt:
            raise ValueError("FLUX uses guidance distillation, not classifier-free guidance: no negative prompt")
        self.pipe = pipe
        self.denoiser, self.vae = pipe.transformer, pipe.vae
        self.scheduler_class = FlowMatchEulerDiscreteScheduler
        self.do_cfg = False  # guidance distillation: one transformer call per step
        self._device = torch.device(device)
        self.guidance_embeds = bool(self.transformer.config.guidance_embeds)
        self.variant = "dev" if self.guidance_embeds else "schnell"
        defaults = VARIANT_DEFAULTS[self.variant]
        self.num_steps = int(num_steps if num_steps is not None else defaults["num_steps"])
        guidance = guidance_scale if guidance_scale is not None else defaults["guidance_scale"]
        self.guidance_scale = float(guidance) if self.guidance_embeds else 0.0
        self.max_sequence_length = int(max_sequence_length or defaults["max_sequence_length"])
        self.scheduler_config = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config).config
        if self.scheduler_config.get("stochastic_sampling"):
            raise ValueError("the checkpoint's scheduler samples stochastically; the replay needs a deterministic one")
        # FluxPipeline.default_sample_size is 128 latent cells; the 2x2 packing needs even latent sizes
        self._configure(height=height, width=width, sample_size=128, multiple=2, memory=memory, compile=compile,
                        name=name)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        device="cpu",
        dtype: torch.dtype = torch.float32,
        *,
        t5_device: str | None = None,
        cpu_offload: bool = False,
        vae_tiling: bool = False,
        vae_slicing: bool = False,
        vae_checkpointing: bool = False,
        compile: bool = False,
        **options,
    ) -> "FluxGenerator":
        """Load a ``FluxPipeline`` folder or Hub id (bfloat16 recommended); memory options: see :mod:`.placement`.
        FluxPipeline's own encoders run on the device their weights are on, so ``t5_device`` needs nothing more."""
        from diffusers import FluxPipeline

        pipe = FluxPipeline.from_pretrained(name_or_path, dtype=dtype)
        place_pipeline(
            pipe, device, cpu_offload=cpu_offload, vae_tiling=vae_tiling, vae_slicing=vae_slicing,
            vae_checkpointing=vae_checkpointing, t5=pipe.text_encoder_2, t5_device=t5_device,
        )
        memory = memory_settings(cpu_offload, vae_tiling, vae_slicing, vae_checkpointing, compile=compile,
                                 t5_device=None if t5_device is None else str(t5_device))
        return cls(pipe, device=device, compile=compile, memory=memory, name=str(name_or_path), **options)

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
            "variant": self.variant,
            "scheduler": "flow-match-euler",
            "guidance": "distilled" if self.guidance_embeds else "none",
            "max_sequence_length": self.max_sequence_length,
        }

    # -- packing ----------------------------------------------------------------------------------------------------
    def _pack(self, latents: Tensor) -> Tensor:
        from diffusers import FluxPipeline

        batch, channels, height, width = latents.shape
        return FluxPipeline._pack_latents(latents, batch, channels, height, width)

    def _unpack(self, packed: Tensor) -> Tensor:
        from diffusers import FluxPipeline

        return FluxPipeline._unpack_latents(packed, self.height, self.width, self.vae_scale)

    # -- the three stages -------------------------------------------------------------------------------------------
    def _set_timesteps(self, scheduler) -> None:
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        n = self.num_steps
        sigmas = None if scheduler.config.get("use_flow_sigmas") else np.linspace(1.0, 1 / n, n)
        _, h, w = self.latent_shape
        mu = calculate_shift(
            (h // 2) * (w // 2),  # packed sequence length
            scheduler.config.get("base_image_seq_len", 256),
            scheduler.config.get("max_image_seq_len", 4096),
            scheduler.config.get("base_shift", 0.5),
            scheduler.config.get("max_shift", 1.15),
        )
        if sigmas is None:
            scheduler.set_timesteps(n, device=self.device, mu=mu)
        else:
            scheduler.set_timesteps(sigmas=sigmas, device=self.device, mu=mu)

    def _start(self, z: Tensor, scheduler) -> Tensor:
        # no initial noise scale (sigma_max = 1); packing is a permutation, so packed z is still standard normal
        return self._pack(z.to(self.device, self.dtype))

    def _finish(self, latents: Tensor) -> Tensor:
        return self._unpack(latents)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> dict:
        """``{"embeds": [B, L, D] (T5), "pooled": [B, P] (CLIP)}`` from ``FluxPipeline.encode_prompt``."""
        embeds, pooled, _ = self.pipe.encode_prompt(
            prompt=list(prompts), prompt_2=None, device=self.device, max_sequence_length=self.max_sequence_length
        )
        return {"embeds": embeds.to(self.dtype), "pooled": pooled.to(self.dtype)}

    @torch.no_grad()
    def sample(self, z: Tensor, conditioning: dict) -> Sampled:
        from diffusers import FluxPipeline

        scheduler = self._fresh_scheduler()
        latents = self._start(z, scheduler)
        batch = latents.shape[0]
        _, h, w = self.latent_shape
        image_ids = FluxPipeline._prepare_latent_image_ids(batch, h // 2, w // 2, self.device, self.dtype)
        embeds, pooled = conditioning["embeds"], conditioning["pooled"]
        text_ids = torch.zeros(embeds.shape[1], 3, device=self.device, dtype=self.dtype)
        guidance = (
            torch.full((batch,), self.guidance_scale, device=self.device, dtype=torch.float32)
            if self.guidance_embeds else None
        )
        record = []
        for t in scheduler.timesteps:
            velocity = self.denoiser(
                hidden_states=latents, timestep=t.expand(batch).to(latents.dtype) / 1000, guidance=guidance,
                pooled_projections=pooled, encoder_hidden_states=embeds, txt_ids=text_ids, img_ids=image_ids,
                return_dict=False,
            )[0]
            record.append(velocity)
            latents = scheduler.step(velocity, t, latents, return_dict=False)[0]
        return Sampled(latents=self._finish(latents), record=record)


def _register() -> None:
    from . import MODEL_ALIASES, PIPELINE_GENERATORS

    PIPELINE_GENERATORS["FluxPipeline"] = FluxGenerator.from_pretrained
    MODEL_ALIASES.update({
        "flux.1-schnell": "black-forest-labs/FLUX.1-schnell",
        "flux.1-dev": "black-forest-labs/FLUX.1-dev",
    })


_register()
