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

    SD-Turbo (``sd-turbo``, distilled from SD 2.1) has its own recommended settings, from its model card and
    scheduler config: 1 step of its Euler scheduler (``timestep_spacing`` "trailing": t = 999, sigma 14.61 -> 0),
    guidance 0 and 512x512. Guidance at most 1 turns classifier-free guidance off, as in diffusers' pipeline (one UNet
    call per step on the prompts' embeddings alone).
    """

    pipeline = "StableDiffusionPipeline"
    family = "stable-diffusion"
    aliases = {
        "sd-v1-4": "CompVis/stable-diffusion-v1-4",
        "sd-v1-5": "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "sd-v2-base": "stabilityai/stable-diffusion-2-base",
        "sd-v2-1-base": "stabilityai/stable-diffusion-2-1-base",
        "sd-turbo": "stabilityai/sd-turbo",
    }
    CHECKPOINT_SAMPLING = {
        "stabilityai/sd-turbo": Sampling(num_steps=1, guidance_scale=0.0, height=512, width=512, scheduler="default")
    }
    LABEL = "SD1.x/2.x"
    #: the paper's settings; the image size is the UNet's native one (512 for SD1.4)
    SAMPLING = Sampling(num_steps=50, guidance_scale=7.5, scheduler="ddim")
    SIZE_NOTE = "512 for SD1.4"
    PREFERRED_DTYPE = "float16"

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
        """Text embeddings ``[2B, L, D]``: the negative prompt's (unconditional) first, then the prompts'; ``[B, L, D]``,
        the prompts' alone, without classifier-free guidance."""
        texts = ([self.negative_prompt] * len(prompts) if self.do_cfg else []) + list(prompts)
        tokens = self.tokenizer(
            texts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        )
        embeds = self.text_encoder(tokens.input_ids.to(self.device))[0].to(self.dtype)
        return Conditioning({"embeds": embeds}, cfg=self.do_cfg)

    def model_output(self, model_input: Tensor, t: Tensor, conditioning: Conditioning) -> Tensor:
        return self.denoiser(model_input, t, encoder_hidden_states=conditioning["embeds"], return_dict=False)[0]
