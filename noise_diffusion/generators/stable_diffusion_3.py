"""Stable Diffusion 3 / 3.5 (``StableDiffusion3Pipeline`` checkpoints) as a Noise Diffusion generator.

SD3 is a rectified-flow model: the transformer predicts a velocity ``v`` and the flow-matching Euler step is
``x <- x + (sigma_next - sigma) * v``. With ``v`` held fixed every step is affine in ``x`` with coefficient 1, so the
replayed gradient w.r.t. ``z`` equals the gradient at the final latent exactly.
The authors of Noise Diffusion released an SD3.5-medium variant with 28 steps, guidance 7.0, negative prompt "" and
512x512 images; those are the defaults here.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UserError
from .base import Conditioning, DiffusersGenerator, register_generator
from .placement import place_t5
from .schedulers import flow_scheduler, resolution_shift
from .settings import MemoryOptions, Sampling


@register_generator
class StableDiffusion3Generator(DiffusersGenerator):
    """MMDiT transformer + VAE + two CLIP encoders (+ T5) with classifier-free guidance (off when guidance <= 1, as in
    diffusers, e.g. for SD3.5-large-turbo)."""

    pipeline = "StableDiffusion3Pipeline"
    family = "stable-diffusion-3"
    aliases = {
        "sd-3-medium": "stabilityai/stable-diffusion-3-medium-diffusers",
        "sd-3.5-medium": "stabilityai/stable-diffusion-3.5-medium",
        "sd-3.5-large": "stabilityai/stable-diffusion-3.5-large",
    }
    LABEL = "SD3/SD3.5"
    #: the Noise Diffusion authors' SD3.5 settings (512x512, below the native 1024x1024)
    SAMPLING = Sampling(num_steps=28, guidance_scale=7.0, height=512, width=512, scheduler="default")
    SIZE_NOTE = "the Noise Diffusion authors' setting, below the native 1024"
    #: the published weights are bf16; T5-XXL overflows in float16
    PREFERRED_DTYPE = "bfloat16"

    def __init__(
        self,
        pipe,
        sampling: Sampling = Sampling(),
        *,
        negative_prompt: str | None = "",
        max_sequence_length: int = 256,
        t5_device: str | torch.device | None = None,
        drop_t5: bool = False,
        device: str | torch.device = "cpu",
        memory: MemoryOptions | None = None,
        name: str = "stable-diffusion-3",
    ) -> None:
        """``t5_device``: run T5 there (e.g. the CPU); ``drop_t5``: the pipeline was loaded without T5 (its embeddings
        are zeros then, as diffusers does with ``text_encoder_3=None``)."""
        self.negative_prompt = negative_prompt or ""
        self.max_sequence_length = int(max_sequence_length)
        self._setup(pipe, pipe.transformer, sampling, device=device, memory=memory, name=name)
        place_t5(pipe.text_encoder_3, t5_device, self.memory)
        self.t5_device = torch.device(t5_device) if t5_device is not None else self._device
        self.t5_placement, self.drop_t5 = None if t5_device is None else str(t5_device), bool(drop_t5)

    @classmethod
    def load_pipeline(cls, name_or_path: str, dtype: torch.dtype, drop_t5: bool = False, t5_device=None, **options):
        from diffusers import StableDiffusion3Pipeline

        if drop_t5 and t5_device is not None:
            raise UserError("drop_t5 and t5_device exclude each other")
        extra = {"text_encoder_3": None, "tokenizer_3": None} if drop_t5 else {}
        return StableDiffusion3Pipeline.from_pretrained(name_or_path, dtype=dtype, **extra)

    def _schedulers(self, pipe_scheduler, choice: str):
        return flow_scheduler(pipe_scheduler, choice)

    def size_multiple(self) -> int:
        return self.denoiser.config.patch_size

    @property
    def transformer(self):
        return self.denoiser

    def settings(self) -> dict:
        return {
            **super().settings(),
            "drop_t5": self.drop_t5,
            "t5_device": self.t5_placement,
            "scheduler": "flow-match-euler",
            "shift": self.scheduler_config.get("shift"),
            "negative_prompt": self.negative_prompt,
            "max_sequence_length": self.max_sequence_length,
            "t5": self.pipe.text_encoder_3 is not None,
        }

    def _set_timesteps(self, scheduler) -> None:
        """The pipeline's timesteps: default sigmas, static shift, or the resolution-dependent shift ``mu`` when the
        checkpoint asks for dynamic shifting (SD3's own constants)."""
        kwargs = {}
        if scheduler.config.get("use_dynamic_shifting"):
            patch, (_, h, w) = self.transformer.config.patch_size, self.latent_shape
            kwargs["mu"] = resolution_shift(scheduler, (h // patch) * (w // patch), max_shift=1.16)
        scheduler.set_timesteps(self.num_steps, device=self.device, **kwargs)

    def _start(self, z: Tensor, scheduler) -> Tensor:
        # SD3's pipelines start from unscaled N(0, I) latents (sigma_max = 1): z is used as it is
        return z.to(self.device, self.dtype)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """``embeds [2B, 77 + L, D]`` and ``pooled [2B, P]`` (negative rows first; ``B`` rows without CFG): both CLIPs'
        penultimate hidden states side by side, zero-padded to the T5 width, followed by T5's (zeros when T5 is
        dropped), as ``StableDiffusion3Pipeline.encode_prompt`` builds them."""
        texts = ([self.negative_prompt] * len(prompts) if self.do_cfg else []) + list(prompts)
        clip_1, pooled_1 = self.pipe._get_clip_prompt_embeds(texts, device=self.device, clip_model_index=0)
        clip_2, pooled_2 = self.pipe._get_clip_prompt_embeds(texts, device=self.device, clip_model_index=1)
        t5 = self.pipe._get_t5_prompt_embeds(
            texts, max_sequence_length=self.max_sequence_length, device=self.t5_device
        ).to(self.device)
        clip = F.pad(torch.cat([clip_1, clip_2], dim=-1), (0, t5.shape[-1] - clip_1.shape[-1] - clip_2.shape[-1]))
        embeds = torch.cat([clip, t5], dim=-2).to(self.dtype)
        pooled = torch.cat([pooled_1, pooled_2], dim=-1).to(self.dtype)
        return Conditioning({"embeds": embeds, "pooled": pooled}, cfg=self.do_cfg)

    def model_output(self, model_input: Tensor, t: Tensor, conditioning: Conditioning) -> Tensor:
        return self.denoiser(
            hidden_states=model_input, timestep=t.expand(model_input.shape[0]),
            encoder_hidden_states=conditioning["embeds"], pooled_projections=conditioning["pooled"], return_dict=False,
        )[0]
