"""Stable Diffusion 1.x / 2.x (``StableDiffusionPipeline`` checkpoints) as a Noise Diffusion generator."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .base import DiffusersGenerator, Sampled, unet_scheduler
from .placement import memory_settings, place_pipeline

SCHEDULERS = ("ddim", "default")


class StableDiffusionGenerator(DiffusersGenerator):
    """UNet + VAE + CLIP text encoder with classifier-free guidance.

    ``scheduler="ddim"`` (the paper's experiments) uses DDIM with η = 0 built from the checkpoint's scheduler config
    with ``clip_sample`` forced off: clipping x0 inside the step would zero the replay gradient. ``"default"`` uses the
    checkpoint's own scheduler (PNDM for SD1.4, as the authors' release script did); a fresh copy is made for every pass
    because PNDM keeps state between steps.
    """

    family = "stable-diffusion"
    #: the paper's settings, used where the caller passes None (see ``generators.sampling_defaults``)
    DEFAULTS = {"num_steps": 50, "guidance_scale": 7.5}
    #: half precision used by ``--dtype auto`` on a GPU
    PREFERRED_DTYPE = "float16"

    def __init__(
        self,
        pipe,
        *,
        scheduler: str = "ddim",
        num_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: str = "",
        height: int | None = None,
        width: int | None = None,
        device: str | torch.device | None = None,
        memory: dict | None = None,
        compile: bool = False,
        name: str = "stable-diffusion",
    ) -> None:
        self.pipe = pipe
        self.denoiser, self.vae, self.text_encoder, self.tokenizer = (
            pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
        )
        for module in (self.denoiser, self.vae, self.text_encoder):
            module.requires_grad_(False)
            module.eval()
        self._device = torch.device(device) if device is not None else self.denoiser.device
        self.scheduler_class, self.scheduler_config = unet_scheduler(pipe.scheduler, scheduler)
        self.scheduler_name = scheduler
        self.num_steps = int(num_steps)
        self.guidance_scale = float(guidance_scale)
        self.do_cfg = True  # SD1.x/2.x always run both branches, as the paper does
        self.negative_prompt = negative_prompt or ""
        self._configure(height=height, width=width, sample_size=self.denoiser.config.sample_size, memory=memory,
                        compile=compile, name=name)
        self._model_evals: int | None = None

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
    ) -> "StableDiffusionGenerator":
        """Load a ``StableDiffusionPipeline`` folder or Hub id. Memory options: see :mod:`.placement`."""
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(
            name_or_path, dtype=dtype, safety_checker=None, requires_safety_checker=False
        )
        device = place_pipeline(
            pipe, device, cpu_offload=cpu_offload, vae_tiling=vae_tiling, vae_slicing=vae_slicing,
            vae_checkpointing=vae_checkpointing,
        )
        memory = memory_settings(cpu_offload, vae_tiling, vae_slicing, vae_checkpointing, compile=compile)
        return cls(pipe, device=device, memory=memory, compile=compile, name=str(name_or_path), **options)

    @property
    def unet(self):
        return self.denoiser

    @unet.setter
    def unet(self, module) -> None:  # e.g. a compiled or patched UNet
        self.denoiser = module

    @property
    def model_evals_per_generation(self) -> int:
        if self._model_evals is None:  # PNDM makes N + 1 calls for N steps: count the real timesteps once
            self._model_evals = super().model_evals_per_generation
        return self._model_evals

    def settings(self) -> dict:
        return {**super().settings(), "scheduler": self.scheduler_name, "negative_prompt": self.negative_prompt}

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Tensor:
        """Text embeddings ``[2B, L, D]``: the negative prompt's (unconditional) first, then the prompts'."""
        texts = [self.negative_prompt] * len(prompts) + list(prompts)
        tokens = self.tokenizer(
            texts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        )
        return self.text_encoder(tokens.input_ids.to(self.device))[0].to(self.dtype)

    @torch.no_grad()
    def sample(self, z: Tensor, conditioning: Tensor) -> Sampled:
        scheduler = self._fresh_scheduler()
        latents = self._start(z, scheduler)
        record = []
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(torch.cat([latents, latents]), t)
            noise = self.denoiser(model_input, t, encoder_hidden_states=conditioning, return_dict=False)[0]
            uncond, cond = noise.chunk(2)
            guided = uncond + self.guidance_scale * (cond - uncond)
            record.append(guided)
            latents = scheduler.step(guided, t, latents, return_dict=False)[0]
        return Sampled(latents=latents, record=record)
