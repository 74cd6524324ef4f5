"""Stable Diffusion 1.x / 2.x (``StableDiffusionPipeline`` checkpoints) as a Noise Diffusion generator."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .base import Sampled
from .placement import memory_settings, place_pipeline

SCHEDULERS = ("ddim", "default")


class StableDiffusionGenerator:
    """UNet + VAE + CLIP text encoder with classifier-free guidance.

    ``scheduler="ddim"`` (the paper's experiments) uses DDIM with η = 0 built from the checkpoint's scheduler config
    with ``clip_sample`` forced off: clipping x0 inside the step would zero the replay gradient. ``"default"`` uses the
    checkpoint's own scheduler (PNDM for SD1.4, as the authors' release script did); a fresh copy is made for every pass
    because PNDM keeps state between steps.
    """

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
        from diffusers import DDIMScheduler

        if scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler!r}; choose from {', '.join(SCHEDULERS)}")
        self.pipe = pipe
        self.unet, self.vae, self.text_encoder, self.tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
        for module in (self.unet, self.vae, self.text_encoder):
            module.requires_grad_(False)
            module.eval()
        # with model CPU offload the modules report "cpu": the device they run on is kept here
        self._device = torch.device(device) if device is not None else self.unet.device
        self.memory = memory or {}
        if compile:
            self.unet = torch.compile(self.unet)
        if scheduler == "ddim":
            self.scheduler_config = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False).config
            self.scheduler_class = DDIMScheduler
        else:
            self.scheduler_config = pipe.scheduler.config
            self.scheduler_class = type(pipe.scheduler)
        self.scheduler_name = scheduler
        self.num_steps = num_steps
        self.guidance_scale = guidance_scale
        self.negative_prompt = negative_prompt
        scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        default_size = self.unet.config.sample_size * scale
        self.height = height or default_size
        self.width = width or default_size
        if self.height % scale or self.width % scale:
            raise ValueError(f"height and width must be multiples of {scale}, got {self.height}x{self.width}")
        self.vae_scale = scale
        self.name = name
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
        """Load a ``StableDiffusionPipeline`` folder or Hub id. Memory options: see :mod:`.placement`; ``compile``
        wraps the UNet in ``torch.compile`` (worth it for long runs on a GPU: the first epochs pay the compilation)."""
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
        if self._model_evals is None:
            self._model_evals = 2 * len(self._fresh_scheduler().timesteps)
        return self._model_evals

    def settings(self) -> dict:
        return {
            "model": self.name,
            "family": "stable-diffusion",
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
        latents = z.to(self.device, self.dtype) * scheduler.init_noise_sigma
        record = []
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(torch.cat([latents, latents]), t)
            noise = self.unet(model_input, t, encoder_hidden_states=conditioning).sample
            uncond, cond = noise.chunk(2)
            guided = uncond + self.guidance_scale * (cond - uncond)
            record.append(guided)
            latents = scheduler.step(guided, t, latents).prev_sample
        return Sampled(latents=latents, record=record)

    def replay(self, z: Tensor, record: list[Tensor]) -> Tensor:
        scheduler = self._fresh_scheduler()
        if len(record) != len(scheduler.timesteps):
            raise ValueError(f"record has {len(record)} steps, the scheduler {len(scheduler.timesteps)}")
        latents = z.to(self.device, self.dtype) * scheduler.init_noise_sigma
        for t, guided in zip(scheduler.timesteps, record):
            latents = scheduler.step(guided, t, latents).prev_sample
        return latents

    def decode(self, latents: Tensor) -> Tensor:
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        images = self.vae.decode(latents / self.vae.config.scaling_factor + shift).sample
        return (images.float() / 2 + 0.5).clamp(0, 1)
