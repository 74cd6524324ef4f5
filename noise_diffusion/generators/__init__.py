"""Text-to-image models as Noise Diffusion generators, chosen from the checkpoint's own ``model_index.json``.

``load_generator(name)`` resolves a short name (:data:`MODEL_ALIASES`), a local folder or a Hub id, reads the
pipeline class that ``model_index.json`` names, and builds the generator class registered for it in
:data:`GENERATORS`. A model family is one module whose class carries ``@register_generator``; it is imported below.
"""

from __future__ import annotations

import inspect
import os

import torch

from ..configfiles import folder_file, read_json_object, string_field
from ..errors import UserError
from .base import GENERATORS, MODEL_ALIASES, Conditioning, Generator, Sampled, first_line, initial_latents
from .base import register_generator
from .settings import COMMON_OPTIONS, MemoryOptions, Sampling

# the model families (each registers itself with its decorator)
from . import stable_diffusion, stable_diffusion_xl, stable_diffusion_3, flux  # noqa: E402,F401  isort: skip
from .stable_diffusion import SCHEDULERS, StableDiffusionGenerator  # noqa: E402


def resolve_model(name: str) -> str:
    return MODEL_ALIASES.get(name, name)


def pipeline_class_name(name_or_path: str) -> str:
    """The ``_class_name`` of a checkpoint's ``model_index.json`` (local folder or Hub id)."""
    if os.path.isdir(name_or_path):
        return string_field(folder_file(name_or_path, "model_index.json", "diffusion model"), "_class_name")
    if name_or_path.count("/") != 1 or name_or_path.startswith((".", "/")) or os.path.exists(name_or_path):
        raise UserError(f"diffusion model {name_or_path!r} is neither a folder, a known short name nor a Hub id")
    try:
        from diffusers import DiffusionPipeline

        return DiffusionPipeline.load_config(name_or_path).get("_class_name", "")
    except (OSError, ValueError) as error:
        raise UserError(f"cannot load diffusion model {name_or_path!r}: {first_line(error)}") from error


def generator_class(name: str) -> type:
    """The generator class that :func:`load_generator` would build for ``name``; :class:`UserError` if none."""
    class_name = pipeline_class_name(resolve_model(name))
    if class_name not in GENERATORS:
        raise UserError(
            f"unsupported diffusion pipeline {class_name!r} in {name!r}; supported: {', '.join(sorted(GENERATORS))}"
        )
    return GENERATORS[class_name]


def load_generator(
    name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, **options
) -> Generator:
    """Load the generator for a short name, folder or Hub id; raise :class:`UserError` when impossible."""
    path = resolve_model(name)
    cls = generator_class(name)
    options = {**sampling_defaults(path, cls), **{k: v for k, v in options.items() if v is not None}}
    _check_options(cls, options)
    generator = cls.from_pretrained(path, device=device, dtype=dtype, **options)
    generator.name = name
    return generator


#: Optional file in a pipeline folder with the sampling settings its authors recommend, e.g.
#: ``{"num_steps": 25, "guidance_scale": 5.0}``; explicit options override it.
SAMPLING_DEFAULTS_FILE = "noise_diffusion.json"


def sampling_defaults(path: str, cls: type) -> dict:
    """Settings used where the caller passes ``None``: the folder's :data:`SAMPLING_DEFAULTS_FILE` over the family's
    recommended :class:`Sampling` (the sampling settings it sets, with those of the checkpoint ``path`` where the family
    declares its own, e.g. SD-Turbo's; a family with variants adds its variant's when it is built)."""
    defaults = cls.checkpoint_sampling(path).given()
    file = os.path.join(path, SAMPLING_DEFAULTS_FILE)
    if os.path.isfile(file):
        defaults.update(read_json_object(file))
    return defaults


#: ``__init__`` parameters that the loader itself fills
_BUILT_BY_THE_LOADER = {"self", "pipe", "sampling", "device", "memory", "name"}


def _check_options(cls: type, options: dict) -> None:
    """Name any option this model family does not take (e.g. ``t5_device`` for SD1.x) instead of a TypeError."""
    own = {p.name for p in inspect.signature(cls.__init__).parameters.values() if p.kind is p.KEYWORD_ONLY}
    unknown = sorted(set(options) - COMMON_OPTIONS - (own - _BUILT_BY_THE_LOADER))
    if unknown:
        raise UserError(f"{cls.pipeline} models take no option {', '.join(unknown)}")


__all__ = [
    "Generator",
    "Sampled",
    "Conditioning",
    "Sampling",
    "MemoryOptions",
    "StableDiffusionGenerator",
    "SCHEDULERS",
    "GENERATORS",
    "MODEL_ALIASES",
    "register_generator",
    "initial_latents",
    "load_generator",
    "generator_class",
    "pipeline_class_name",
    "resolve_model",
]
