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

from .base import Sampled
from .placement import memory_settings, place_pipeline, upcast_vae_if_needed

SCHEDULERS = ("ddim", "default")


class StableDiffusionXLGenerator:
    """UNet + VAE + CLIP-L + CLIP-G with classifier-free guidance (off when guidance <= 1, e.g. for SDXL-Turbo)."""

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
        from diffusers import DDIMScheduler

        if scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler!r}; choose from {', '.join(SCHEDULERS)}")
        self.pipe = pipe
        self.unet, self.vae = pipe.unet, pipe.vae
        self._device = torch.device(device)
        if scheduler == "ddim":
            self.scheduler_class = DDIMScheduler
            self.scheduler_config = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False).config
        else:
            self.scheduler_class = type(pipe.scheduler)
            self.scheduler_config = pipe.scheduler.config
            if self.scheduler_config.get("s_churn", 0.0):
                raise ValueError("the checkpoint's scheduler adds noise (s_churn > 0); replay needs determinism")
        self.scheduler_name = scheduler
        self.num_steps = int(num_steps)
        self.guidance_scale = float(guidance_scale)
        self.do_cfg = self.guidance_scale > 1.0
        self.negative_prompt = negative_prompt or ""
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        default_size = self.unet.config.sample_size * self.vae_scale
        self.height, self.width = height or default_size, width or default_size
        if self.height % self.vae_scale or self.width % self.vae_scale:
            raise ValueError(f"height and width must be multiples of {self.vae_scale}, got {self.height}x{self.width}")
        self.memory = memory or {}
        if compile:  # worth it on long GPU runs; the first generations pay the compilation
            self.unet = torch.compile(self.unet)
        self.name = name

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

    # -- properties -------------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.unet.config.in_channels, self.height // self.vae_scale, self.width // self.vae_scale)

    @property
    def model_evals_per_generation(self) -> int:
        return (2 if self.do_cfg else 1) * len(self._fresh_scheduler().timesteps)

    def settings(self) -> dict:
        return {
            "model": self.name,
            "family": "stable-diffusion-xl",
            "scheduler": self.scheduler_name,
            "scheduler_class": self.scheduler_class.__name__,
            "num_steps": self.num_steps,
            "guidance_scale": self.guidance_scale,
            "negative_prompt": self.negative_prompt,
            "height": self.height,
            "width": self.width,
            "dtype": str(self.dtype).removeprefix("torch."),
            **self.memory,
        }

    # -- the three stages -------------------------------------------------------------------------------------------
    def _fresh_scheduler(self):
        scheduler = self.scheduler_class.from_config(self.scheduler_config)
        scheduler.set_timesteps(self.num_steps, device=self.device)
        return scheduler

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
        # z is standard normal; the scheduler's initial noise scale is applied here (and in replay), not to z
        latents = z.to(self.device, self.dtype) * scheduler.init_noise_sigma
        added = {"text_embeds": conditioning["pooled"], "time_ids": conditioning["time_ids"]}
        record = []
        for t in scheduler.timesteps:
            model_input = torch.cat([latents, latents]) if self.do_cfg else latents
            model_input = scheduler.scale_model_input(model_input, t)
            noise = self.unet(
                model_input, t, encoder_hidden_states=conditioning["embeds"], added_cond_kwargs=added, return_dict=False
            )[0]
            if self.do_cfg:
                uncond, cond = noise.chunk(2)
                noise = uncond + self.guidance_scale * (cond - uncond)
            record.append(noise)
            latents = scheduler.step(noise, t, latents, return_dict=False)[0]
        return Sampled(latents=latents, record=record)

    def replay(self, z: Tensor, record: list[Tensor]) -> Tensor:
        scheduler = self._fresh_scheduler()
        if len(record) != len(scheduler.timesteps):
            raise ValueError(f"record has {len(record)} steps, the scheduler {len(scheduler.timesteps)}")
        latents = z.to(self.device, self.dtype) * scheduler.init_noise_sigma
        for t, noise in zip(scheduler.timesteps, record):
            scheduler.scale_model_input(latents, t)  # result unused; keeps Euler's bookkeeping as in sampling
            latents = scheduler.step(noise, t, latents, return_dict=False)[0]
        return latents

    def decode(self, latents: Tensor) -> Tensor:
        """Undo the latent normalisation (per-channel mean/std when the VAE config has them, else the scaling factor),
        decode in the VAE's dtype (float32 for SDXL's VAE under float16, which overflows otherwise), map to [0, 1]."""
        config = self.vae.config
        latents = latents.to(self.vae.dtype)
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if mean is not None and std is not None:
            shape = (1, len(mean), 1, 1)
            mean = torch.tensor(mean, device=latents.device, dtype=latents.dtype).view(shape)
            std = torch.tensor(std, device=latents.device, dtype=latents.dtype).view(shape)
            latents = latents * std / config.scaling_factor + mean
        else:
            latents = latents / config.scaling_factor
        images = self.vae.decode(latents, return_dict=False)[0]
        return (images.float() / 2 + 0.5).clamp(0, 1)


def _register() -> None:
    from . import MODEL_ALIASES, PIPELINE_GENERATORS

    PIPELINE_GENERATORS["StableDiffusionXLPipeline"] = StableDiffusionXLGenerator.from_pretrained
    MODEL_ALIASES.update({"sdxl-base-1.0": "stabilityai/stable-diffusion-xl-base-1.0"})


_register()
