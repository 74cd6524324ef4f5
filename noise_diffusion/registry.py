"""One small registry helper for the plug-ins (diffusion model families, verifiers, short model names).

An entry is registered where it is defined, by the decorator :meth:`Registry.register` or by :meth:`Registry.add`;
the package that owns a registry imports its plug-in modules explicitly, so a module is either imported or visibly not.
"""

from __future__ import annotations

from typing import Callable, TypeVar

T = TypeVar("T")


class Registry(dict):
    """A ``name -> entry`` table that refuses to register one name for two different entries."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def add(self, name: str, entry: T) -> T:
        if name in self and self[name] != entry:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self[name] = entry
        return entry

    def register(self, *names: str) -> Callable[[T], T]:
        """Decorator: register the decorated class or function under each of ``names``."""

        def decorate(entry: T) -> T:
            for name in names:
                self.add(name, entry)
            return entry

        return decorate
