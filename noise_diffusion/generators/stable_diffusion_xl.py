"""Stable Diffusion XL (``StableDiffusionXLPipeline`` checkpoints, base model; no refiner) as a Noise Diffusion
generator.

SDXL is an epsilon-prediction UNet like SD1.x, conditioned on two CLIP encoders (their penultimate hidden states side
by side), the pooled projection of the second, and six "micro-conditioning" numbers: original size, crop corner and
target size (here: the image size, (0, 0), the image size, as diffusers does by default).

Schedulers: ``"ddim"`` (η = 0, ``clip_sample`` off, as for SD1.x) or ``"default"``, the checkpoint's own (Euler for
SDXL base). Euler scales the initial noise by ``init_noise_sigma`` (about 13.16 with SDXL's betas and 50 steps): ``z``
stays standard normal and the scale is applied inside ``sample`` and ``replay``, so the gradient w.r.t. ``z`` is that
scale times the gradient at the final latent (an Euler step with the noise held fixed is affine with coefficient 1).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .base import DiffusersGenerator, Sampled, unet_scheduler
from .placement import memory_settings, place_pipeline, upcast_vae_if_needed



class StableDiffusionXLGenerator(DiffusersGenerator):
    """UNet + VAE + CLIP-L + CLIP-G with classifier-free guidance (off when guidance <= 1, e.g. for SDXL-Turbo)."""

    family = "stable-diffusion-xl"
    #: diffusers' SDXL defaults (guidance 5.0, 50 steps, 1024x1024; the model card shows the same size)
    DEFAULTS = {"num_steps": 50, "guidance_scale": 5.0, "height": 1024, "width": 1024}
    #: precision recommended on a GPU (the VAE is kept in float32 where it would overflow, see ``upcast_vae_if_needed``)
    PREFERRED_DTYPE = "float16"

    def __init__(
        self,
        pipe,
        *,
        device: str | torch.device = "cpu",
        scheduler: str = "ddim",
        num_steps: int = 50,
        guidance_scale: float = 5.0,
        negative_prompt: str | None = "",
        height: int | None = None,
        width: int | None = None,
        memory: dict | None = None,
        compile: bool = False,
        name: str = "stable-diffusion-xl",
    ) -> None:
        self.pipe = pipe
        self.denoiser, self.vae = pipe.unet, pipe.vae
        self._device = torch.device(device)
        self.scheduler_class, self.scheduler_config = unet_scheduler(pipe.scheduler, scheduler)
        self.scheduler_name = scheduler
        self.num_steps = int(num_steps)
        self.guidance_scale = float(guidance_scale)
        self.do_cfg = self.guidance_scale > 1.0
        self.negative_prompt = negative_prompt or ""
        self._configure(height=height, width=width, sample_size=self.denoiser.config.sample_size, memory=memory,
                        compile=compile, name=name)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        device="cpu",
        dtype: torch.dtype = torch.float32,
        *,
        cpu_offload: bool = False,
        vae_tiling: bool = False,
        vae_slicing: bool = False,
        vae_checkpointing: bool = False,
        compile: bool = False,
        **options,
    ) -> "StableDiffusionXLGenerator":
        """Load a ``StableDiffusionXLPipeline`` folder or Hub id; memory options: see :mod:`.placement`."""
        from diffusers import StableDiffusionXLPipeline

        pipe = StableDiffusionXLPipeline.from_pretrained(name_or_path, dtype=dtype, add_watermarker=False)
        place_pipeline(
            pipe, device, cpu_offload=cpu_offload, vae_tiling=vae_tiling, vae_slicing=vae_slicing,
            vae_checkpointing=vae_checkpointing,
        )
        upcast_vae_if_needed(pipe.vae)
        memory = memory_settings(cpu_offload, vae_tiling, vae_slicing, vae_checkpointing, compile=compile)
        return cls(pipe, device=device, compile=compile, memory=memory, name=str(name_or_path), **options)

    @property
    def unet(self):
        return self.denoiser

    def settings(self) -> dict:
        return {**super().settings(), "scheduler": self.scheduler_name, "negative_prompt": self.negative_prompt}

    # -- the three stages (replay and decode: see DiffusersGenerator) ---------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> dict:
        """``{"embeds": [2B, 77, D1 + D2], "pooled": [2B, P], "time_ids": [2B, 6]}``, negative rows first (``[B, ...]``
        without CFG). An empty negative prompt means diffusers' default: zero embeddings when the checkpoint says
        ``force_zeros_for_empty_prompt`` (SDXL base does), else the encoded empty string."""
        embeds, negative, pooled, negative_pooled = self.pipe.encode_prompt(
            prompt=list(prompts), device=self.device, do_classifier_free_guidance=self.do_cfg,
            negative_prompt=self.negative_prompt or None,
        )
        if self.do_cfg:
            embeds, pooled = torch.cat([negative, embeds]), torch.cat([negative_pooled, pooled])
        projection_dim = (
            self.pipe.text_encoder_2.config.projection_dim if self.pipe.text_encoder_2 is not None else pooled.shape[-1]
        )
        time_ids = self.pipe._get_add_time_ids(
            (self.height, self.width), (0, 0), (self.height, self.width), dtype=embeds.dtype,
            text_encoder_projection_dim=projection_dim,
        )
        time_ids = time_ids.to(self.device).repeat(embeds.shape[0], 1)
        return {"embeds": embeds.to(self.dtype), "pooled": pooled.to(self.dtype), "time_ids": time_ids.to(self.dtype)}

    @torch.no_grad()
    def sample(self, z: Tensor, conditioning: dict) -> Sampled:
        scheduler = self._fresh_scheduler()
        latents = self._start(z, scheduler)  # z standard normal; Euler's init_noise_sigma is applied here, not to z
        added = {"text_embeds": conditioning["pooled"], "time_ids": conditioning["time_ids"]}
        record = []
        for t in scheduler.timesteps:
            model_input = torch.cat([latents, latents]) if self.do_cfg else latents
            model_input = scheduler.scale_model_input(model_input, t)
            noise = self.denoiser(
                model_input, t, encoder_hidden_states=conditioning["embeds"], added_cond_kwargs=added, return_dict=False
            )[0]
            if self.do_cfg:
                uncond, cond = noise.chunk(2)
                noise = uncond + self.guidance_scale * (cond - uncond)
            record.append(noise)
            latents = scheduler.step(noise, t, latents, return_dict=False)[0]
        return Sampled(latents=latents, record=record)


def _register() -> None:
    from . import MODEL_ALIASES, PIPELINE_GENERATORS

    PIPELINE_GENERATORS["StableDiffusionXLPipeline"] = StableDiffusionXLGenerator.from_pretrained
    MODEL_ALIASES.update({"sdxl-base-1.0": "stabilityai/stable-diffusion-xl-base-1.0"})


_register()
