"""What the Noise Diffusion loop needs from a text-to-image model.

A generator turns a batch of standard-normal initial latents ``z`` into images in three stages, so that the
expensive part never has to be differentiated:

1. :meth:`Generator.sample` runs the ordinary guided sampler without gradients and records the model's guided
   prediction of every scheduler step (noise for DDPM-style models, velocity for flow matching);
2. :meth:`Generator.replay` runs only the scheduler steps again from ``z`` with the recorded predictions held fixed,
   through a fresh scheduler, so that the final latent is a differentiable (affine) function of ``z``;
3. :meth:`Generator.decode` maps final latents to images ``[B, 3, H, W]`` in ``[0, 1]``.

``z`` is always standard normal: a model whose scheduler scales the initial noise (``init_noise_sigma``) applies that
scale inside ``sample`` and ``replay``, so that the Noise Diffusion update keeps its meaning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import torch
from torch import Tensor

from ..errors import UserError
from ..registry import Registry
from .placement import memory_settings, place_pipeline, upcast_vae_if_needed

#: ``_class_name`` of a checkpoint's ``model_index.json`` -> the generator class for it
GENERATORS = Registry("diffusion pipeline")
#: short model name -> local folder or Hub id
MODEL_ALIASES = Registry("model name")


def register_generator(cls: type) -> type:
    """Class decorator of a model family: registers it for its ``pipeline`` and its short names (``aliases``)."""
    GENERATORS.add(cls.pipeline, cls)
    for alias, path in cls.aliases.items():
        MODEL_ALIASES.add(alias, path)
    return cls


@dataclass
class Sampled:
    """The result of one sampling pass: final latents (no gradient) and the recorded model predictions."""

    latents: Tensor
    record: list[Tensor]


class Generator(Protocol):
    """Interface of a text-to-image model for the loop. See the module docstring."""

    #: device and dtype of the diffusion model
    device: torch.device
    dtype: torch.dtype
    #: short description recorded in results
    name: str

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one initial latent, without the batch dimension."""

    @property
    def model_evals_per_generation(self) -> int:
        """Network evaluations (per image) that one sampling pass costs; with CFG, both halves count."""

    def encode_prompts(self, prompts: Sequence[str]) -> Any:
        """Encode the prompts (with the unconditional branch for guidance); the result is passed back to ``sample``."""

    def sample(self, z: Tensor, conditioning: Any) -> Sampled:
        """Sample from ``z`` without gradients and record the guided prediction of every step."""

    def replay(self, z: Tensor, record: list[Tensor]) -> Tensor:
        """Differentiable final latents from ``z`` with the recorded predictions held fixed."""

    def decode(self, latents: Tensor) -> Tensor:
        """Latents to images ``[B, 3, H, W]`` in [0, 1] (differentiable)."""

    def settings(self) -> dict:
        """The generation settings, for the result record."""


def initial_latents(shape: Sequence[int], seeds: Sequence[int]) -> Tensor:
    """Standard-normal initial latents, one per seed, each drawn from a CPU generator seeded with its seed.

    Drawing on the CPU makes the initial image of a seed the same on every device (as diffusers does when it is
    handed a CPU generator).
    """
    return torch.stack([torch.randn(tuple(shape), generator=torch.Generator("cpu").manual_seed(int(s))) for s in seeds])


@dataclass
class Conditioning:
    """The encoded prompts of a batch of B items, which knows its own row layout.

    Every tensor in ``tensors`` has ``2B`` rows (the negative prompts' first, then the prompts') when ``cfg`` is true,
    else ``B`` rows, one per item. :meth:`select` keeps the rows of some items, so the loop never has to guess a
    family's layout.
    """

    tensors: dict[str, Tensor]
    cfg: bool

    def __getitem__(self, key: str) -> Tensor:
        return self.tensors[key]

    @property
    def batch_size(self) -> int:
        rows = next(iter(self.tensors.values())).shape[0]
        return rows // 2 if self.cfg else rows

    def select(self, indices: Sequence[int]) -> "Conditioning":
        """The conditioning of the items ``indices`` (in that order)."""
        batch = self.batch_size
        if list(indices) == list(range(batch)):
            return self
        selected = {}
        for key, tensor in self.tensors.items():
            idx = torch.as_tensor(list(indices), device=tensor.device)
            selected[key] = torch.cat([tensor[idx], tensor[idx + batch]]) if self.cfg else tensor[idx]
        return Conditioning(selected, self.cfg)


#: a model callable for :meth:`DiffusersGenerator.denoise`: (scaled model input, timestep, step index) -> prediction
Predict = Callable[[Tensor, Tensor, int], Tensor]


class DiffusersGenerator:
    """Everything the generators built on a diffusers pipeline share: loading with the memory options, the one
    denoising loop (sampling and replay are two model callables passed to it), classifier-free guidance and decoding.

    A family subclass is registered with :func:`register_generator` and sets the class attributes ``pipeline`` (the
    ``_class_name`` in ``model_index.json``), ``family``, ``DEFAULTS``, ``PREFERRED_DTYPE`` and ``aliases``; its
    ``__init__`` takes the pipeline and calls :meth:`_setup`. It implements
    ``encode_prompts`` and ``model_output`` (one network call), and may override ``load_pipeline``, the loading hooks
    and the latent hooks ``_set_timesteps``, ``_start`` (scale or pack ``z``) and ``_finish`` (unpack).
    """

    family = "diffusers"
    pipeline = ""
    #: sampling settings used where the caller passes None (a pipeline folder's ``noise_diffusion.json`` overrides)
    DEFAULTS: dict = {}
    #: half precision used by ``--dtype auto`` on a GPU
    PREFERRED_DTYPE = "float16"
    #: short model names -> Hub ids, registered with the family
    aliases: dict[str, str] = {}
    #: loader options this family takes besides the common memory options (e.g. ``t5_device``)
    LOAD_OPTIONS: tuple[str, ...] = ()
    #: keep a float16 VAE that overflows (``force_upcast``) in float32, as diffusers' pipeline of this family does
    UPCAST_VAE = False

    # -- loading --------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        *,
        cpu_offload: bool = False,
        vae_tiling: bool = False,
        vae_slicing: bool = False,
        vae_checkpointing: bool = False,
        compile: bool = False,
        **options,
    ):
        """Load a pipeline folder or Hub id of this family and place it (memory options: see :mod:`.placement`)."""
        load_options = {key: options.pop(key) for key in cls.LOAD_OPTIONS if key in options}
        try:
            pipe = cls.load_pipeline(name_or_path, dtype, **load_options)
        except UserError:
            raise
        except (OSError, ValueError) as error:  # missing or malformed files; a family's own bugs stay tracebacks
            raise UserError(f"cannot load diffusion model {name_or_path!r}: {first_line(error)}") from error
        device = place_pipeline(
            pipe, device, cpu_offload=cpu_offload, vae_tiling=vae_tiling, vae_slicing=vae_slicing,
            vae_checkpointing=vae_checkpointing, t5=cls.t5_encoder(pipe), t5_device=load_options.get("t5_device"),
        )
        if cls.UPCAST_VAE:
            upcast_vae_if_needed(pipe.vae)
        memory = memory_settings(cpu_offload, vae_tiling, vae_slicing, vae_checkpointing, compile=compile,
                                 **cls.memory_record(load_options))
        return cls(pipe, device=device, memory=memory, compile=compile, name=str(name_or_path),
                   **cls.init_options(load_options), **options)

    @classmethod
    def load_pipeline(cls, name_or_path: str, dtype: torch.dtype, **load_options):
        import diffusers

        return getattr(diffusers, cls.pipeline).from_pretrained(name_or_path, dtype=dtype)

    @classmethod
    def t5_encoder(cls, pipe):
        """The T5 text encoder that ``t5_device`` moves (None: the family has none)."""
        return None

    @classmethod
    def memory_record(cls, load_options: dict) -> dict:
        """The T5 options (where the family takes them), recorded with the memory settings."""
        record = {}
        if "drop_t5" in cls.LOAD_OPTIONS:
            record["drop_t5"] = bool(load_options.get("drop_t5"))
        if "t5_device" in cls.LOAD_OPTIONS:
            t5_device = load_options.get("t5_device")
            record["t5_device"] = None if t5_device is None else str(t5_device)
        return record

    @classmethod
    def init_options(cls, load_options: dict) -> dict:
        """Loader options that ``__init__`` needs too."""
        return {}

    @property
    def device(self) -> torch.device:
        # kept explicitly: under model CPU offload the modules themselves report "cpu"
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self.denoiser.dtype

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.denoiser.config.in_channels, self.height // self.vae_scale, self.width // self.vae_scale)

    @property
    def model_evals_per_generation(self) -> int:
        if getattr(self, "_model_evals", None) is None:  # PNDM makes N + 1 calls for N steps: count them once
            self._model_evals = (2 if self.do_cfg else 1) * len(self.fresh_scheduler().timesteps)
        return self._model_evals

    def settings(self) -> dict:
        return {
            "model": self.name,
            "family": self.family,
            "scheduler_class": self.scheduler_class.__name__,
            "num_steps": self.num_steps,
            "guidance_scale": self.guidance_scale,
            "height": self.height,
            "width": self.width,
            "dtype": str(self.dtype).removeprefix("torch."),
            **self.memory,
        }

    def _setup(
        self, pipe, denoiser, *, schedulers: tuple, device: str | torch.device | None, num_steps: int,
        guidance_scale: float, do_cfg: bool, negative_prompt: str | None, height: int | None, width: int | None,
        sample_size: int, multiple: int = 1, memory: dict | None, compile: bool, name: str,
    ) -> None:
        """What every family's ``__init__`` does: adopt and freeze the pipeline's modules, take the scheduler
        ``(class, config)``, the sampling settings, the image size (default ``sample_size`` latents, a multiple of
        ``multiple`` latent cells), the memory record and an optional ``torch.compile`` of the denoiser."""
        self.pipe, self.denoiser, self.vae = pipe, denoiser, pipe.vae
        for module in pipe.components.values():
            if isinstance(module, torch.nn.Module):
                module.requires_grad_(False)
                module.eval()
        self._device = torch.device(device) if device is not None else denoiser.device
        self.scheduler_class, self.scheduler_config = schedulers
        self.num_steps = int(num_steps)
        self.guidance_scale = float(guidance_scale)
        self.do_cfg = do_cfg
        self.negative_prompt = negative_prompt or ""
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        default_size = sample_size * self.vae_scale
        self.height, self.width = height or default_size, width or default_size
        check_size(self.height, self.width, multiple * self.vae_scale)
        self.memory = memory or {}
        if compile:  # worth it on long GPU runs; the first generations pay the compilation
            self.denoiser = torch.compile(self.denoiser)
        self.name = name
        self._model_evals = None

    # -- hooks ----------------------------------------------------------------------------------------------------
    def model_output(self, model_input: Tensor, t: Tensor, conditioning: Conditioning) -> Tensor:
        """One network call on ``model_input`` (both CFG halves stacked when ``do_cfg``)."""
        raise NotImplementedError

    def _set_timesteps(self, scheduler) -> None:
        scheduler.set_timesteps(self.num_steps, device=self.device)

    def _start(self, z: Tensor, scheduler) -> Tensor:
        """The sampler's first latent from standard-normal ``z``: the scheduler's initial noise scale is applied here,
        never to ``z``, so the Noise Diffusion update keeps its meaning."""
        return z.to(self.device, self.dtype) * scheduler.init_noise_sigma

    def _finish(self, latents: Tensor) -> Tensor:
        return latents

    # -- the loop -------------------------------------------------------------------------------------------------
    def fresh_scheduler(self):
        """A new scheduler for every pass: some (PNDM, Euler) keep state between steps."""
        scheduler = self.scheduler_class.from_config(self.scheduler_config)
        self._set_timesteps(scheduler)
        return scheduler

    def denoise(self, z: Tensor, predict: Predict) -> Tensor:
        """The scheduler loop from standard-normal ``z`` to the final latent, with ``predict`` as the model.

        ``predict(model_input, t, i)`` gets the scheduler-scaled latent (without gradient: predictions are held
        fixed in the replay) and returns the model's prediction for step ``i``. Sampling and replay are this one
        loop with two callables, which is why the replay reproduces the sampler exactly.
        """
        scheduler = self.fresh_scheduler()
        latents = self._start(z, scheduler)
        # Euler-type schedulers also need the call for their bookkeeping; DDIM and PNDM return the input unchanged
        scale_input = getattr(scheduler, "scale_model_input", None)
        for i, t in enumerate(scheduler.timesteps):
            model_input = scale_input(latents.detach(), t) if scale_input is not None else latents.detach()
            latents = scheduler.step(predict(model_input, t, i), t, latents, return_dict=False)[0]
        return self._finish(latents)

    @torch.no_grad()
    def sample(self, z: Tensor, conditioning: Conditioning) -> Sampled:
        """Sample without gradients; record the guided prediction of every step."""
        record: list[Tensor] = []

        def guided(model_input: Tensor, t: Tensor, i: int) -> Tensor:
            if self.do_cfg:
                uncond, cond = self.model_output(torch.cat([model_input, model_input]), t, conditioning).chunk(2)
                prediction = uncond + self.guidance_scale * (cond - uncond)
            else:
                prediction = self.model_output(model_input, t, conditioning)
            record.append(prediction)
            return prediction

        return Sampled(latents=self.denoise(z, guided), record=record)

    def replay(self, z: Tensor, record: list[Tensor]) -> Tensor:
        """The scheduler steps from ``z`` with the recorded predictions held fixed: differentiable, no model call."""
        steps = len(self.fresh_scheduler().timesteps)
        if len(record) != steps:
            raise ValueError(f"record has {len(record)} steps, the scheduler {steps}")
        return self.denoise(z, lambda model_input, t, i: record[i])

    def decode(self, latents: Tensor) -> Tensor:
        return decode_latents(self.vae, latents)


def decode_latents(vae, latents: Tensor) -> Tensor:
    """Undo the latent normalisation of ``vae`` — per-channel mean/std when its config has them (SDXL-style), else the
    scaling *and* shift factors (SD1.x/2.x have no shift; SD3 and FLUX do) — decode, and map to [0, 1]."""
    config = vae.config
    latents = latents.to(vae.dtype)
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None:
        shape = (1, len(mean), 1, 1)
        mean = torch.tensor(mean, device=latents.device, dtype=latents.dtype).view(shape)
        std = torch.tensor(std, device=latents.device, dtype=latents.dtype).view(shape)
        latents = latents * std / config.scaling_factor + mean
    else:
        latents = latents / config.scaling_factor + (getattr(config, "shift_factor", None) or 0.0)
    images = vae.decode(latents, return_dict=False)[0]
    return (images.float() / 2 + 0.5).clamp(0, 1)


def unet_scheduler(pipe_scheduler, choice: str):
    """Scheduler class and config for an epsilon-prediction UNet: ``"ddim"`` (η = 0, built from the checkpoint's config
    with ``clip_sample`` forced off — clipping x0 inside the step would zero the replay gradient) or ``"default"``
    (the checkpoint's own, which must be deterministic)."""
    from diffusers import DDIMScheduler

    if choice == "ddim":
        return DDIMScheduler, DDIMScheduler.from_config(pipe_scheduler.config, clip_sample=False).config
    if choice == "default":
        if pipe_scheduler.config.get("s_churn", 0.0):
            raise UserError("the checkpoint's scheduler adds noise (s_churn > 0); the replay needs a deterministic one")
        return type(pipe_scheduler), pipe_scheduler.config
    raise UserError(f"unknown scheduler {choice!r}; choose from ddim, default")


def flow_scheduler(pipe_scheduler, choice: str | None):
    """The flow-matching Euler scheduler of an SD3/FLUX checkpoint: their one deterministic sampler, selected by both
    ``"ddim"`` (the command-line default) and ``"default"``."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if choice not in (None, "ddim", "default"):
        raise UserError(f"unknown scheduler {choice!r}; flow-matching models use their own Euler scheduler")
    config = FlowMatchEulerDiscreteScheduler.from_config(pipe_scheduler.config).config
    if config.get("stochastic_sampling"):
        raise UserError("the checkpoint's scheduler samples stochastically; the replay needs a deterministic one")
    return FlowMatchEulerDiscreteScheduler, config


def resolution_shift(scheduler, image_seq_len: int, max_shift: float) -> float:
    """The flow-matching pipelines' resolution-dependent timestep shift ``mu`` (diffusers' ``calculate_shift``, the
    same function in the SD3 and FLUX pipelines) from the scheduler config; ``max_shift`` is the family's default
    where the config has none (1.16 for SD3, 1.15 for FLUX)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    config = scheduler.config
    return calculate_shift(image_seq_len, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                           config.get("base_shift", 0.5), config.get("max_shift", max_shift))


def first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def check_size(height: int, width: int, multiple: int) -> None:
    if height % multiple or width % multiple:
        raise UserError(f"height and width must be multiples of {multiple}, got {height}x{width}")
