"""What a run is made with, as data: the diffusion model (:class:`GeneratorSpec`) and the verifier
(:class:`VerifierSpec`).

``run.py``, ``evaluate.py`` and the Python API build each spec once (the CLIs from their flags, see
:func:`noise_diffusion.cli.generator_spec`), check it before any weights are loaded, build the model from it, and
record it in every ``result.json`` as it is.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch

from .errors import UserError
from .generators import Generator, generator_class, load_generator, resolve_model
from .verifiers import Verifier, load_verifier, verifier_loader

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def default_device() -> str:
    return "cuda:0" if torch.cuda.is_available() else "cpu"


def resolve_device(device: str | None) -> torch.device:
    """Check that a device string names a device this machine has (``None``: the first GPU, else the CPU)."""
    device = device or default_device()
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as error:
        raise UserError(f"invalid device {device!r}") from error
    if parsed.type == "cuda" and (not torch.cuda.is_available() or (parsed.index or 0) >= torch.cuda.device_count()):
        raise UserError(f"device {device!r} is not available (torch sees {torch.cuda.device_count()} CUDA devices)")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device {device!r} is not available")
    return parsed


def resolve_dtype(name: str, device: torch.device, gpu_default: str = "float16") -> torch.dtype:
    """``auto`` means ``gpu_default`` on a GPU and float32 on the CPU."""
    if name == "auto":
        name = gpu_default if device.type != "cpu" else "float32"
    if name not in DTYPES:
        raise UserError(f"unknown dtype {name!r}; choose from auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def quiet_loading() -> None:
    """Silence the libraries' per-file loading bars: the run's own progress bar is the one that matters."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


@dataclass(frozen=True)
class GeneratorSpec:
    """The diffusion model: a short name, folder or Hub id, where and in which precision it runs, its sampling
    settings (``None``: the model family's recommended value) and its memory options (see
    :mod:`noise_diffusion.generators.placement`)."""

    model: str = "CompVis/stable-diffusion-v1-4"
    device: str | None = None
    dtype: str = "float32"
    scheduler: str | None = None  # None: the family's recommended scheduler
    num_steps: int | None = None
    guidance_scale: float | None = None
    negative_prompt: str = ""
    height: int | None = None
    width: int | None = None
    cpu_offload: bool = False
    vae_slicing: bool = False
    vae_tiling: bool = False
    vae_checkpointing: bool = False
    compile: bool = False
    t5_device: str | None = None
    drop_t5: bool = False

    def check(self) -> "GeneratorSpec":
        """The checks that need no weights: numbers in range, a device this machine has, a supported model."""
        if self.num_steps is not None and self.num_steps < 1:
            raise UserError(f"num_denoising_steps must be >= 1, got {self.num_steps}")
        if self.scheduler not in (None, "ddim", "default"):
            raise UserError(f"unknown scheduler {self.scheduler!r}; choose from ddim, default")
        if self.guidance_scale is not None and not math.isfinite(self.guidance_scale):
            raise UserError(f"guidance_scale must be a finite number, got {self.guidance_scale}")
        for key in ("height", "width"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                raise UserError(f"{key} must be positive, got {getattr(self, key)}")
        resolve_device(self.device)
        generator_class(self.model)
        return self

    def model_path(self) -> str:
        """The folder or Hub id that ``model`` names (short names resolved)."""
        return resolve_model(self.model)

    def loader_options(self) -> dict:
        """Keyword arguments of :func:`load_generator`: the sampling settings given and the memory options set (so
        every family keeps its own defaults, and one that lacks an option says so)."""
        options = {"scheduler": self.scheduler, "num_steps": self.num_steps, "guidance_scale": self.guidance_scale,
                   "negative_prompt": self.negative_prompt, "height": self.height, "width": self.width}
        for flag in ("cpu_offload", "vae_slicing", "vae_tiling", "vae_checkpointing", "compile", "drop_t5"):
            if getattr(self, flag):
                options[flag] = True
        if self.t5_device:
            options["t5_device"] = self.t5_device
        return options

    def build(self) -> Generator:
        self.check()
        quiet_loading()
        device = resolve_device(self.device)
        dtype = resolve_dtype(self.dtype, device, gpu_default=generator_class(self.model).PREFERRED_DTYPE)
        return load_generator(self.model, device, dtype, **self.loader_options())

    def record(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class VerifierSpec:
    """The verifier: a registered name, folder or Hub id, where and in which precision it runs (``device=None``: the
    diffusion model's device) and the VQA options given (``None``: the verifier's own default)."""

    model: str = "clip-flant5-xxl"
    device: str | None = None
    dtype: str = "auto"
    question: str | None = None
    answer: str | None = None
    resize: str | None = None
    micro_batch: int | None = None
    checkpointing: bool = False

    def options(self) -> dict:
        """Keyword arguments of :func:`load_verifier`: only the options given."""
        options = {"question_template": self.question, "answer_template": self.answer, "resize": self.resize,
                   "micro_batch": self.micro_batch, "checkpointing": True if self.checkpointing else None}
        return {key: value for key, value in options.items() if value is not None}

    def check(self, default_device: str | None = None) -> "VerifierSpec":
        resolve_device(self.device or default_device)
        verifier_loader(self.model)
        return self

    def build(self, default_device: str | None = None) -> Verifier:
        self.check(default_device)
        quiet_loading()
        device = resolve_device(self.device or default_device)
        return load_verifier(self.model, device, resolve_dtype(self.dtype, device, gpu_default="bfloat16"),
                           **self.options())

    def record(self) -> dict:
        return asdict(self)


def spec_from_record(cls: type, record: dict):
    """A spec from its recorded dict, ignoring keys it does not know (records written by other versions)."""
    names = {field.name for field in fields(cls)}
    return cls(**{key: value for key, value in record.items() if key in names})
