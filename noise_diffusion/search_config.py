"""The settings of the search (the generator and the verifier carry their own, see :mod:`noise_diffusion.specs`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from .errors import UserError
from .methods import METHODS

ACCEPT_RULES = ("always", "improved")


@dataclass
class SearchConfig:
    """Settings of the search."""

    method: str = "noise_diffusion"
    max_epoch: int = 50
    num_candidates: int = 50
    accept: str = "always"
    target_score: float | None = None
    step_size: float = 0.1  # gradient_ascent only
    keep_epoch_images: bool = False  # how results are kept, not how they are made: never recorded

    def validate(self) -> "SearchConfig":
        if self.method not in METHODS:
            raise UserError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.max_epoch < 0:
            raise UserError(f"max_epoch must be >= 0, got {self.max_epoch}")
        if self.num_candidates < 1:
            raise UserError(f"num_candidates must be >= 1, got {self.num_candidates}")
        if self.accept not in ACCEPT_RULES:
            raise UserError(f"accept must be one of {', '.join(ACCEPT_RULES)}, got {self.accept!r}")
        if self.target_score is not None and not 0.0 <= self.target_score <= 1.0:  # NaN fails too
            raise UserError(f"target_score must lie in [0, 1], got {self.target_score}")
        if not (math.isfinite(self.step_size) and self.step_size > 0):
            raise UserError(f"step_size must be a finite number > 0, got {self.step_size}")
        return self

    @property
    def epochs(self) -> int:
        return 0 if METHODS[self.method].propose is None else self.max_epoch

    def record(self) -> dict:
        """The recorded settings (all but ``keep_epoch_images``)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "keep_epoch_images"}
