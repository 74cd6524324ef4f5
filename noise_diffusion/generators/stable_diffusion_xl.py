"""Stable Diffusion XL (``StableDiffusionXLPipeline`` checkpoints, base model; no refiner) as a Noise Diffusion
generator.

SDXL is an epsilon-prediction UNet like SD1.x, conditioned on two CLIP encoders (their penultimate hidden states side
by side), the pooled projection of the second, and six "micro-conditioning" numbers: original size, crop corner and
target size (here: the image size, (0, 0), the image size, as diffusers does by default).

Schedulers: ``"ddim"`` (η = 0, ``clip_sample`` off, as for SD1.x) or ``"default"``, the checkpoint's own (Euler for
SDXL base). Euler scales the initial noise by ``init_noise_sigma`` (about 13.16 with SDXL's betas and 50 steps): ``z``
stays standard normal and the scale is applied inside the denoising loop, so the gradient w.r.t. ``z`` is that scale
times the gradient at the final latent (an Euler step with the noise held fixed is affine with coefficient 1).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .base import Conditioning, DiffusersGenerator, register_generator
from .settings import MemoryOptions, Sampling


@register_generator
class StableDiffusionXLGenerator(DiffusersGenerator):
    """UNet + VAE + CLIP-L + CLIP-G with classifier-free guidance (off when guidance <= 1, e.g. for SDXL-Turbo)."""

    pipeline = "StableDiffusionXLPipeline"
    family = "stable-diffusion-xl"
    aliases = {"sdxl-base-1.0": "stabilityai/stable-diffusion-xl-base-1.0", "sdxl-turbo": "stabilityai/sdxl-turbo"}
    #: SDXL-Turbo: 1 step of its own Euler ancestral scheduler ("trailing" spacing), guidance 0, 512x512 (its model
    #: card and scheduler config); at 1 step the ancestral sampler adds no noise (see ``schedulers.check_deterministic``)
    CHECKPOINT_SAMPLING = {
        "stabilityai/sdxl-turbo": Sampling(num_steps=1, guidance_scale=0.0, height=512, width=512, scheduler="default")
    }
    LABEL = "SDXL"
    #: diffusers' SDXL defaults (guidance 5.0, 50 steps, 1024x1024; the model card shows the same size)
    SAMPLING = Sampling(num_steps=50, guidance_scale=5.0, height=1024, width=1024, scheduler="ddim")
    PREFERRED_DTYPE = "float16"
    UPCAST_VAE = True  # SDXL's VAE overflows in float16

    def __init__(
        self,
        pipe,
        sampling: Sampling = Sampling(),
        *,
        negative_prompt: str | None = "",
        device: str | torch.device = "cpu",
        memory: MemoryOptions | None = None,
        name: str = "stable-diffusion-xl",
    ) -> None:
        self.negative_prompt = negative_prompt or ""
        self._setup(pipe, pipe.unet, sampling, device=device, memory=memory, name=name)

    @classmethod
    def load_pipeline(cls, name_or_path: str, dtype: torch.dtype, **options):
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline.from_pretrained(name_or_path, dtype=dtype, add_watermarker=False)

    @property
    def unet(self):
        return self.denoiser

    def settings(self) -> dict:
        return {**super().settings(), "scheduler": self.scheduler_name, "negative_prompt": self.negative_prompt}

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """``embeds [2B, 77, D1 + D2]``, ``pooled [2B, P]``, ``time_ids [2B, 6]``, negative rows first (``B`` rows
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
        tensors = {"embeds": embeds, "pooled": pooled, "time_ids": time_ids}
        return Conditioning({key: value.to(self.dtype) for key, value in tensors.items()}, cfg=self.do_cfg)

    def model_output(self, model_input: Tensor, t: Tensor, conditioning: Conditioning) -> Tensor:
        added = {"text_embeds": conditioning["pooled"], "time_ids": conditioning["time_ids"]}
        return self.denoiser(
            model_input, t, encoder_hidden_states=conditioning["embeds"], added_cond_kwargs=added, return_dict=False
        )[0]
