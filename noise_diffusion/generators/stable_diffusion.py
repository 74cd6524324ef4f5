"""Stable Diffusion 1.x / 2.x (``StableDiffusionPipeline`` checkpoints) as a Noise Diffusion generator."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .base import Conditioning, DiffusersGenerator, register_generator
from .settings import MemoryOptions, Sampling

SCHEDULERS = ("ddim", "default")


@register_generator
class StableDiffusionGenerator(DiffusersGenerator):
    """UNet + VAE + CLIP text encoder with classifier-free guidance.

    ``scheduler="ddim"`` (the paper's experiments) uses DDIM with η = 0 built from the checkpoint's scheduler config
    with ``clip_sample`` forced off: clipping x0 inside the step would zero the replay gradient. ``"default"`` uses the
    checkpoint's own scheduler (PNDM for SD1.4, as the authors' release script did); a fresh copy is made for every pass
    because PNDM keeps state between steps.
    """

    pipeline = "StableDiffusionPipeline"
    family = "stable-diffusion"
    aliases = {
        "sd-v1-4": "CompVis/stable-diffusion-v1-4",
        "sd-v1-5": "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "sd-v2-base": "stabilityai/stable-diffusion-2-base",
        "sd-v2-1-base": "stabilityai/stable-diffusion-2-1-base",
    }
    LABEL = "SD1.x/2.x"
    #: the paper's settings; the image size is the UNet's native one (512 for SD1.4)
    SAMPLING = Sampling(num_steps=50, guidance_scale=7.5, scheduler="ddim")
    SIZE_NOTE = "512 for SD1.4"
    PREFERRED_DTYPE = "float16"
    #: SD1.x/2.x always run both branches of classifier-free guidance, as the paper does
    do_cfg = True

    def __init__(
        self,
        pipe,
        sampling: Sampling = Sampling(),
        *,
        negative_prompt: str = "",
        device: str | torch.device | None = None,
        memory: MemoryOptions | None = None,
        name: str = "stable-diffusion",
    ) -> None:
        self.text_encoder, self.tokenizer = pipe.text_encoder, pipe.tokenizer
        self.negative_prompt = negative_prompt or ""
        self._setup(pipe, pipe.unet, sampling, device=device, memory=memory, name=name)

    @classmethod
    def load_pipeline(cls, name_or_path: str, dtype: torch.dtype, **options):
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline.from_pretrained(
            name_or_path, dtype=dtype, safety_checker=None, requires_safety_checker=False
        )

    @property
    def unet(self):
        return self.denoiser

    @unet.setter
    def unet(self, module) -> None:  # e.g. a compiled or patched UNet
        self.denoiser = module

    def settings(self) -> dict:
        return {**super().settings(), "scheduler": self.scheduler_name, "negative_prompt": self.negative_prompt}

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """Text embeddings ``[2B, L, D]``: the negative prompt's (unconditional) first, then the prompts'."""
        texts = [self.negative_prompt] * len(prompts) + list(prompts)
        tokens = self.tokenizer(
            texts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        )
        embeds = self.text_encoder(tokens.input_ids.to(self.device))[0].to(self.dtype)
        return Conditioning({"embeds": embeds}, cfg=True)

    def model_output(self, model_input: Tensor, t: Tensor, conditioning: Conditioning) -> Tensor:
        return self.denoiser(model_input, t, encoder_hidden_states=conditioning["embeds"], return_dict=False)[0]
