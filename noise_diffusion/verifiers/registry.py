"""Where verifiers are registered: by short name (with the Hub id or path their loader gets) and by the ``model_type``
of a model folder's ``config.json``. A loader is ``loader(name_or_path, device, dtype, **options) -> Verifier``."""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

from ..registry import Registry


class NamedVerifier(NamedTuple):
    loader: Callable
    path: str


#: short name -> (loader, Hub id or path)
VERIFIERS = Registry("verifier name")
#: config.json ``model_type`` -> loader
ARCHITECTURES = Registry("verifier architecture")


def register_verifier(names: dict[str, str] | None = None, model_types: Sequence[str] = ()) -> Callable:
    """Decorator of a verifier loader: registers it under the short ``names`` (name -> Hub id or path) and for the
    config ``model_types`` it reads."""

    def decorate(loader: Callable) -> Callable:
        for name, path in (names or {}).items():
            VERIFIERS.add(name, NamedVerifier(loader, path))
        for model_type in model_types:
            ARCHITECTURES.add(model_type, loader)
        return loader

    return decorate
