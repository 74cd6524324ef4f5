"""Text-to-image models as Noise Diffusion generators, chosen from the checkpoint's own ``model_index.json``.

``load_generator(name)`` resolves a short name (:data:`MODEL_ALIASES`), a local folder or a Hub id, reads the
pipeline class that ``model_index.json`` names, and builds the matching generator from :data:`PIPELINE_GENERATORS`.
Sibling generators (SDXL, SD3, FLUX, ...) register themselves there without touching the loop.
"""

from __future__ import annotations

import json
import os
from typing import Callable

import torch

from ..errors import UserError
from .base import Generator, Sampled, initial_latents
from .stable_diffusion import SCHEDULERS, StableDiffusionGenerator

#: pipeline class name in model_index.json -> loader(name_or_path, device, dtype, **options) -> Generator
PIPELINE_GENERATORS: dict[str, Callable[..., Generator]] = {
    "StableDiffusionPipeline": StableDiffusionGenerator.from_pretrained,
}

#: short name -> local folder or Hub id (other modules, e.g. the toy world, add theirs)
MODEL_ALIASES: dict[str, str] = {
    "sd-v1-4": "CompVis/stable-diffusion-v1-4",
    "sd-v1-5": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd-v2-base": "stabilityai/stable-diffusion-2-base",
    "sd-v2-1-base": "stabilityai/stable-diffusion-2-1-base",
}


def resolve_model(name: str) -> str:
    _register_optional_generators()
    return MODEL_ALIASES.get(name, name)


def pipeline_class_name(name_or_path: str) -> str:
    """The ``_class_name`` of a checkpoint's ``model_index.json`` (local folder or Hub id)."""
    if os.path.isdir(name_or_path):
        path = os.path.join(name_or_path, "model_index.json")
        if not os.path.isfile(path):
            raise UserError(f"diffusion model folder {name_or_path!r} has no model_index.json")
        index = _read_json_object(path)
        return index.get("_class_name", "") if isinstance(index.get("_class_name", ""), str) else ""
    if name_or_path.count("/") != 1 or name_or_path.startswith((".", "/")) or os.path.exists(name_or_path):
        raise UserError(f"diffusion model {name_or_path!r} is neither a folder, a known short name nor a Hub id")
    try:
        from diffusers import DiffusionPipeline

        return DiffusionPipeline.load_config(name_or_path).get("_class_name", "")
    except (OSError, ValueError) as error:
        raise UserError(f"cannot load diffusion model {name_or_path!r}: {_first_line(error)}") from error


def generator_class(name: str) -> type | None:
    """The generator class that :func:`load_generator` would build for ``name`` (None if the loader is no method)."""
    loader = PIPELINE_GENERATORS.get(pipeline_class_name(resolve_model(name)))
    return getattr(loader, "__self__", None)


def load_generator(
    name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, **options
) -> Generator:
    """Load the generator for a short name, folder or Hub id; raise :class:`UserError` when impossible."""
    path = resolve_model(name)
    class_name = pipeline_class_name(path)
    if class_name not in PIPELINE_GENERATORS:
        raise UserError(
            f"unsupported diffusion pipeline {class_name!r} in {name!r}; supported: {', '.join(sorted(PIPELINE_GENERATORS))}"
        )
    loader = PIPELINE_GENERATORS[class_name]
    options = {**sampling_defaults(path, loader), **{k: v for k, v in options.items() if v is not None}}
    _check_options(loader, class_name, options)
    try:
        generator = loader(path, device=device, dtype=dtype, **options)
    except (OSError, ValueError) as error:
        if isinstance(error, UserError):
            raise
        raise UserError(f"cannot load diffusion model {name!r}: {_first_line(error)}") from error
    generator.name = name
    return generator


#: Optional file in a pipeline folder with the sampling settings its authors recommend, e.g.
#: ``{"num_steps": 25, "guidance_scale": 5.0}``; explicit options override it.
SAMPLING_DEFAULTS_FILE = "noise_diffusion.json"


def sampling_defaults(path: str, loader) -> dict:
    """Settings used where the caller passes ``None``: the folder's :data:`SAMPLING_DEFAULTS_FILE`, else the family's
    ``DEFAULTS`` (the class attribute of the generator that ``loader`` builds)."""
    owner = getattr(loader, "__self__", None)
    defaults = dict(getattr(owner, "DEFAULTS", {}))
    file = os.path.join(path, SAMPLING_DEFAULTS_FILE)
    if os.path.isfile(file):
        defaults.update(_read_json_object(file))
    return defaults


def _read_json_object(path: str) -> dict:
    """A JSON object from a checkpoint file; :class:`UserError` naming the file when it is broken or not an object."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError
        raise UserError(f"{path} is not valid JSON ({_first_line(error)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _check_options(loader, class_name: str, options: dict) -> None:
    """Name any option this model family does not take (e.g. ``t5_device`` for SD1.x) instead of a TypeError."""
    import inspect

    owner = getattr(loader, "__self__", None)
    accepted: set[str] = set()
    for function in (loader, getattr(owner, "__init__", None)):
        if function is None:
            continue
        parameters = inspect.signature(function).parameters.values()
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters) and function is not loader:
            return
        accepted |= {p.name for p in parameters}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise UserError(f"{class_name} models take no option {', '.join(unknown)}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


_optional_registered = False


def _register_optional_generators() -> None:
    """Import the generator modules that register themselves (SDXL, SD3, FLUX, the toy world)."""
    global _optional_registered
    if _optional_registered:
        return
    _optional_registered = True
    import importlib

    for module in ("stable_diffusion_xl", "stable_diffusion_3", "flux", "noise_diffusion.toy"):
        full = module if "." in module else f"{__name__}.{module}"
        try:
            importlib.import_module(full)
        except ModuleNotFoundError as error:
            if error.name != full:
                raise


__all__ = [
    "Generator",
    "Sampled",
    "StableDiffusionGenerator",
    "SCHEDULERS",
    "PIPELINE_GENERATORS",
    "MODEL_ALIASES",
    "initial_latents",
    "load_generator",
    "generator_class",
    "pipeline_class_name",
    "resolve_model",
]
