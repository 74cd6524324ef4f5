"""The settings a generator is built with, as small records: how it samples and how it spends memory.

Each model family declares its recommended :class:`Sampling` once (its ``SAMPLING`` class attribute); the loader, the
constructors, the result record and the command-line help all read it from there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace


@dataclass(frozen=True)
class Sampling:
    """Sampling settings; a ``None`` field is "the family's default" (for the size: the denoiser's native size).

    The field names are the loader's keyword arguments (``load_generator(name, num_steps=25)``) and the keys of a
    pipeline folder's ``noise_diffusion.json``.
    """

    num_steps: int | None = None
    guidance_scale: float | None = None
    height: int | None = None
    width: int | None = None
    #: "ddim" or "default" (the checkpoint's own); flow-matching families have one sampler and accept both
    scheduler: str | None = None

    @classmethod
    def take(cls, options: dict) -> "Sampling":
        """The sampling settings among ``options`` (removed from it); absent or ``None`` ones stay ``None``."""
        return cls(**{f.name: options.pop(f.name) for f in fields(cls) if f.name in options})

    def over(self, defaults: "Sampling") -> "Sampling":
        """These settings, with every ``None`` field taken from ``defaults``."""
        return replace(defaults, **self.given())

    def given(self) -> dict:
        """The fields that are set, as loader options."""
        return {key: value for key, value in asdict(self).items() if value is not None}


@dataclass(frozen=True)
class MemoryOptions:
    """The memory and speed options every family takes (described in :mod:`.placement`); recorded with the results."""

    cpu_offload: bool = False
    vae_tiling: bool = False
    vae_slicing: bool = False
    vae_checkpointing: bool = False
    #: ``torch.compile`` the denoiser (worth it on long GPU runs; the first generations pay the compilation)
    compile: bool = False

    @classmethod
    def take(cls, options: dict) -> "MemoryOptions":
        """The memory options among ``options`` (removed from it)."""
        return cls(**{f.name: bool(options.pop(f.name)) for f in fields(cls) if f.name in options})

    def record(self) -> dict:
        return asdict(self)


#: every loader option that is a field of these records
COMMON_OPTIONS = frozenset(f.name for record in (Sampling, MemoryOptions) for f in fields(record))
