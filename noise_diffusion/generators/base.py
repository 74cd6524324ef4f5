"""What the Noise Diffusion loop needs from a text-to-image model.

A generator turns a batch of standard-normal initial latents ``z`` into images in three stages, so that the
expensive part never has to be differentiated:

1. :meth:`Generator.sample` runs the ordinary guided sampler without gradients and records the model's guided
   prediction of every scheduler step (noise for DDPM-style models, velocity for flow matching);
2. :meth:`Generator.replay` runs only the scheduler steps again from ``z`` with the recorded predictions held fixed,
   through a fresh scheduler, so that the final latent is a differentiable (affine) function of ``z``;
3. :meth:`Generator.decode` maps final latents to images ``[B, 3, H, W]`` in ``[0, 1]``.

:meth:`Generator.exact` differentiates the sampler itself instead, through every network call (:mod:`.exact`).

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
from .exact import ExactPass, exact_pass
from .placement import place_pipeline, upcast_vae_if_needed
from .schedulers import check_deterministic, unet_scheduler
from .settings import MemoryOptions, Sampling

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

    def exact(self, z: Tensor, conditioning: Any, checkpointing: bool | None = None) -> ExactPass:
        """The sampling pass under autograd through every network call, with the predictions recorded."""

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
#: a per-step hook for :meth:`DiffusersGenerator.denoise`: (latents, timestep, step index) -> the latents that step
#: ``i`` starts from (the same tensor, or a replacement: e.g. the latent moved by attention guidance)
StepHook = Callable[[Tensor, Tensor, int], Tensor]


class DiffusersGenerator:
    """Everything the generators built on a diffusers pipeline share: loading with the memory options, the one
    denoising loop (sampling and replay are two model callables passed to it), classifier-free guidance and decoding.

    A family subclass is registered with :func:`register_generator` and sets the class attributes ``pipeline`` (the
    ``_class_name`` in ``model_index.json``), ``family``, ``LABEL``, ``SAMPLING``, ``PREFERRED_DTYPE`` and
    ``aliases``; its ``__init__`` takes the pipeline and its :class:`Sampling`, sets its own options and calls
    :meth:`_setup`. It implements ``encode_prompts`` and ``model_output`` (one network call), and may override
    ``load_pipeline``, ``family_sampling``, ``_schedulers``, ``size_multiple`` and the latent hooks ``_set_timesteps``,
    ``_start`` (scale or pack ``z``) and ``_finish`` (unpack).
    """

    family = "diffusers"
    pipeline = ""
    #: the family's name in help texts
    LABEL = ""
    #: the recommended sampling settings, used where the caller gives none (a pipeline folder's
    #: ``noise_diffusion.json`` overrides them); a size left ``None`` is the denoiser's native size
    SAMPLING = Sampling()
    #: what the help says about the recommended image size, where it needs a word
    SIZE_NOTE = ""
    #: half precision used by ``--dtype auto`` on a GPU
    PREFERRED_DTYPE = "float16"
    #: short model names -> Hub ids, registered with the family
    aliases: dict[str, str] = {}
    #: recommended settings of particular checkpoints (Hub id -> the fields that differ from ``SAMPLING``)
    CHECKPOINT_SAMPLING: dict[str, Sampling] = {}
    #: keep a float16 VAE that overflows (``force_upcast``) in float32, as diffusers' pipeline of this family does
    UPCAST_VAE = False

    # -- loading --------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, name_or_path: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, **options
    ):
        """Load a pipeline folder or Hub id of this family and place it. ``options``: the fields of :class:`Sampling`
        and :class:`MemoryOptions` (see :mod:`.placement`) and the keyword arguments of the family's ``__init__``."""
        sampling = Sampling.take(options).over(cls.checkpoint_sampling(str(name_or_path)))
        memory = MemoryOptions.take(options)
        try:
            pipe = cls.load_pipeline(name_or_path, dtype, **options)
        except UserError:
            raise
        except (OSError, ValueError) as error:  # missing or malformed files; a family's own bugs stay tracebacks
            raise UserError(f"cannot load diffusion model {name_or_path!r}: {first_line(error)}") from error
        device = place_pipeline(pipe, device, memory)
        if cls.UPCAST_VAE:
            upcast_vae_if_needed(pipe.vae)
        return cls(pipe, sampling, device=device, memory=memory, name=str(name_or_path), **options)

    @classmethod
    def load_pipeline(cls, name_or_path: str, dtype: torch.dtype, **options):
        """The diffusers pipeline; ``options`` are the family's ``__init__`` options (a loader may need some)."""
        import diffusers

        return getattr(diffusers, cls.pipeline).from_pretrained(name_or_path, dtype=dtype)

    @classmethod
    def family_sampling(cls, pipe) -> Sampling:
        """The recommended sampling settings for ``pipe`` (a family with variants picks the variant's)."""
        return cls.SAMPLING

    @classmethod
    def checkpoint_sampling(cls, path: str) -> Sampling:
        """The recommended sampling settings of the checkpoint ``path`` (a Hub id): its own, over the family's."""
        return cls.CHECKPOINT_SAMPLING.get(path, Sampling()).over(cls.SAMPLING)

    @classmethod
    def recommended(cls) -> dict[str, Sampling]:
        """The recommended sampling settings by name (the family's ``LABEL``, or one per variant, and the short name
        of each checkpoint with its own), for help texts."""
        own = {alias: cls.checkpoint_sampling(path) for alias, path in cls.aliases.items()
               if path in cls.CHECKPOINT_SAMPLING}
        return {cls.LABEL: cls.SAMPLING, **own}

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
    def do_cfg(self) -> bool:
        """Whether sampling runs both branches of classifier-free guidance (diffusers' rule: guidance above 1)."""
        return self.guidance_scale > 1.0

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
            **self.memory.record(),
        }

    def _setup(self, pipe, denoiser, sampling: Sampling, *, device: str | torch.device | None,
               memory: MemoryOptions | None, name: str) -> None:
        """What every family's ``__init__`` does: adopt and freeze the pipeline's modules; resolve ``sampling`` over the
        family's recommended settings (scheduler, steps, guidance, image size: a multiple of :meth:`size_multiple`
        latent cells); keep the memory options and ``torch.compile`` the denoiser when they ask for it."""
        self.pipe, self.denoiser, self.vae = pipe, denoiser, pipe.vae
        for module in pipe.components.values():
            if isinstance(module, torch.nn.Module):
                module.requires_grad_(False)
                module.eval()
        self._device = torch.device(device) if device is not None else denoiser.device
        sampling = sampling.over(self.family_sampling(pipe))
        self.scheduler_name = sampling.scheduler
        self.scheduler_class, self.scheduler_config = self._schedulers(pipe.scheduler, sampling.scheduler)
        self.num_steps, self.guidance_scale = int(sampling.num_steps), float(sampling.guidance_scale)
        check_deterministic(self.scheduler_class, self.num_steps)
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        native = (denoiser.config.sample_size * self.vae_scale) if None in (sampling.height, sampling.width) else None
        self.height, self.width = sampling.height or native, sampling.width or native
        check_size(self.height, self.width, self.size_multiple() * self.vae_scale)
        self.memory = memory or MemoryOptions()
        if self.memory.compile:  # worth it on long GPU runs; the first generations pay the compilation
            self.denoiser = torch.compile(self.denoiser)
        self.name = name
        self._model_evals = None

    # -- hooks ----------------------------------------------------------------------------------------------------
    def model_output(self, model_input: Tensor, t: Tensor, conditioning: Conditioning) -> Tensor:
        """One network call on ``model_input`` (both CFG halves stacked when ``do_cfg``)."""
        raise NotImplementedError

    def _schedulers(self, pipe_scheduler, choice: str):
        """Scheduler class and config for the ``scheduler`` setting (an epsilon-prediction UNet's by default)."""
        return unet_scheduler(pipe_scheduler, choice)

    def size_multiple(self) -> int:
        """Image sides must be a multiple of this many latent cells (a transformer's patch size)."""
        return 1

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

    def denoise(self, z: Tensor, predict: Predict, before_step: StepHook | None = None) -> Tensor:
        """The scheduler loop from standard-normal ``z`` to the final latent, with ``predict`` as the model.

        At step ``i``, ``before_step(latents, t, i)`` (when given) returns the latents the step starts from;
        ``predict(model_input, t, i)`` gets them scaled by the scheduler and returns the model's prediction. The
        model input keeps its autograd history, so a predictor decides what is differentiated: sampling runs without
        gradients, the replay ignores its input (its predictions are held fixed), and a predictor that calls the
        network under autograd makes the whole chain differentiable. Sampling and replay are this one loop with two
        callables, which is why the replay reproduces the sampler exactly.
        """
        scheduler = self.fresh_scheduler()
        latents = self._start(z, scheduler)
        # Euler-type schedulers also need the call for their bookkeeping; DDIM and PNDM return the input unchanged
        scale_input = getattr(scheduler, "scale_model_input", None)
        for i, t in enumerate(scheduler.timesteps):
            if before_step is not None:
                latents = before_step(latents, t, i)
            model_input = scale_input(latents, t) if scale_input is not None else latents
            latents = scheduler.step(predict(model_input, t, i), t, latents, return_dict=False)[0]
        return self._finish(latents)

    def guided(self, conditioning: Conditioning) -> Predict:
        """The sampler's model: one network call per step, the two halves combined by classifier-free guidance when
        ``do_cfg`` (the unconditional rows first)."""

        def predict(model_input: Tensor, t: Tensor, i: int) -> Tensor:
            if not self.do_cfg:
                return self.model_output(model_input, t, conditioning)
            uncond, cond = self.model_output(torch.cat([model_input, model_input]), t, conditioning).chunk(2)
            return uncond + self.guidance_scale * (cond - uncond)

        return predict

    @torch.no_grad()
    def sample(self, z: Tensor, conditioning: Conditioning) -> Sampled:
        """Sample without gradients; record the guided prediction of every step."""
        record: list[Tensor] = []
        guided = self.guided(conditioning)

        def recorded(model_input: Tensor, t: Tensor, i: int) -> Tensor:
            record.append(guided(model_input, t, i))
            return record[-1]

        return Sampled(latents=self.denoise(z, recorded), record=record)

    def replay(self, z: Tensor, record: list[Tensor]) -> Tensor:
        """The scheduler steps from ``z`` with the recorded predictions held fixed: differentiable, no model call."""
        steps = len(self.fresh_scheduler().timesteps)
        if len(record) != steps:
            raise ValueError(f"record has {len(record)} steps, the scheduler {steps}")
        return self.denoise(z, lambda model_input, t, i: record[i])

    def exact(self, z: Tensor, conditioning: Conditioning, checkpointing: bool | None = None) -> ExactPass:
        """The sampling pass under autograd through every network call, classifier-free guidance included, each
        step's call checkpointed when ``checkpointing`` (default: when there is more than one; see :mod:`.exact`)."""
        return exact_pass(self, z, conditioning, checkpointing)

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
    images = images.to(torch.promote_types(images.dtype, torch.float32))  # half precision up; float64 stays
    return (images / 2 + 0.5).clamp(0, 1)


def first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def check_size(height: int, width: int, multiple: int) -> None:
    if height % multiple or width % multiple:
        raise UserError(f"height and width must be multiples of {multiple}, got {height}x{width}")
