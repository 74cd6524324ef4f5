"""Verifiers behind one protocol (see :class:`Verifier`), selectable by a short name, a Hub id or a local folder.

``load_verifier(name)`` looks the name up in :data:`VERIFIERS` (short registered names) and otherwise reads the model's
``config.json`` and picks the loader from its ``model_type`` (:data:`ARCHITECTURES`). A verifier family registers its
loader with :func:`register_verifier` and is imported here (the toy world registers its own).
"""

from __future__ import annotations

import os
from typing import Callable

import torch

from ..configfiles import folder_file, string_field
from ..errors import UserError
from ..images import pil_to_tensor, tensor_to_pil  # noqa: F401 (re-exported)
from .base import Verifier
from .clip import CLIPVerifier
from .registry import ARCHITECTURES, VERIFIERS, register_verifier

# the verifier families (each registers its loaders); the toy world registers its own from noise_diffusion.toy
from . import clip, vqa  # noqa: E402,F401  isort: skip


def verifier_loader(name: str) -> Callable[..., Verifier]:
    """The loader for a registered name, folder or Hub id, without loading any weights; :class:`UserError` if none."""
    if name in VERIFIERS:
        loader, path = VERIFIERS[name]
        return lambda **kw: loader(path, **kw)
    model_type = _model_type(name)
    if model_type not in ARCHITECTURES:
        known = ", ".join(sorted(VERIFIERS))
        raise UserError(
            f"unsupported verifier {name!r} (model_type {model_type!r}); use a registered name ({known}) "
            f"or a folder/Hub id of a supported architecture ({', '.join(sorted(ARCHITECTURES))})"
        )
    loader = ARCHITECTURES[model_type]
    return lambda **kw: loader(name, **kw)


def load_verifier(name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, **options) -> Verifier:
    """Load a verifier by registered short name, Hub id or local folder; raise :class:`UserError` when impossible."""
    loader = verifier_loader(name)
    return _load(name, lambda: loader(device=device, dtype=dtype, **options))


def _load(name: str, loader: Callable[[], Verifier]) -> Verifier:
    try:
        verifier = loader()
    except UserError:
        raise
    except (OSError, ValueError) as error:
        if isinstance(error, ValueError) and not _raised_by_loading_libraries(error):
            raise  # a ValueError of this package's own code is a bug, not bad input
        raise UserError(f"cannot load verifier {name!r}: {_first_line(error)}") from error
    verifier.name = name
    return verifier


#: the libraries whose ValueErrors while loading mean a malformed checkpoint (a bad config, tokenizer or weights file)
LOADING_LIBRARIES = ("transformers", "huggingface_hub", "safetensors", "tokenizers", "sentencepiece", "json")


def _raised_by_loading_libraries(error: BaseException) -> bool:
    """Was ``error`` raised inside one of :data:`LOADING_LIBRARIES` (judged by the innermost frame's file)?"""
    import traceback

    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return False
    parts = frames[-1].filename.replace("\\", "/").split("/")
    return any(library in parts for library in LOADING_LIBRARIES)


def _model_type(name: str) -> str:
    if os.path.isdir(name):
        return string_field(folder_file(name, "config.json", "verifier"), "model_type")
    looks_like_hub_id = name.count("/") == 1 and not name.startswith((".", "/"))
    if not looks_like_hub_id:
        known = ", ".join(sorted(VERIFIERS))
        raise UserError(f"unknown verifier {name!r}: not a registered name ({known}), a folder or a Hub id")
    try:
        # read config.json itself: AutoConfig rejects model types transformers does not know (e.g. ShareGPT4V's)
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(name, "config.json")
    except Exception as error:  # noqa: BLE001 - hub errors come in many types; all mean "cannot load"
        raise UserError(f"cannot load verifier {name!r}: {_first_line(error)}") from error
    return string_field(path, "model_type")


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


__all__ = [
    "Verifier", "CLIPVerifier", "VERIFIERS", "ARCHITECTURES", "register_verifier", "load_verifier", "verifier_loader",
    "pil_to_tensor", "tensor_to_pil",
]
