"""The settings of the search (the generator and the verifier carry their own, see :mod:`noise_diffusion.specs`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from .errors import UserError
from .methods import METHODS

ACCEPT_RULES = ("always", "improved")
GRADIENTS = ("replay", "exact")


@dataclass
class SearchConfig:
    """Settings of the search. A setting left ``None`` takes the method's own default (:class:`~noise_diffusion.
    methods.Method`); :meth:`record` stores it resolved, so that two runs made alike compare equal."""

    method: str = "noise_diffusion"
    max_epoch: int = 50
    num_candidates: int | None = None  # candidate noises (noise_diffusion) or neighbours (zero_order) per epoch
    accept: str = "always"  # a method with its own rule (zero_order, reno, mean_variance) ignores it
    target_score: float | None = None
    step_size: float = 0.1  # gradient_ascent only
    #: the gradient of the methods that use one: "replay" (the paper's, predictions held fixed) or "exact"
    gradient: str | None = None
    neighbour_cosine: float = 0.95  # zero_order only: every neighbour's cosine with the pivot
    keep_epoch_images: bool = False  # how results are kept, not how they are made: never recorded

    def validate(self) -> "SearchConfig":
        if self.method not in METHODS:
            raise UserError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.max_epoch < 0:
            raise UserError(f"max_epoch must be >= 0, got {self.max_epoch}")
        if self.num_candidates is not None and self.num_candidates < 1:
            raise UserError(f"num_candidates must be >= 1, got {self.num_candidates}")
        if self.accept not in ACCEPT_RULES:
            raise UserError(f"accept must be one of {', '.join(ACCEPT_RULES)}, got {self.accept!r}")
        if self.target_score is not None and not 0.0 <= self.target_score <= 1.0:  # NaN fails too
            raise UserError(f"target_score must lie in [0, 1], got {self.target_score}")
        if not (math.isfinite(self.step_size) and self.step_size > 0):
            raise UserError(f"step_size must be a finite number > 0, got {self.step_size}")
        if self.gradient is not None and self.gradient not in GRADIENTS:
            raise UserError(f"gradient must be one of {', '.join(GRADIENTS)}, got {self.gradient!r}")
        if not (isinstance(self.neighbour_cosine, (int, float)) and -1.0 < self.neighbour_cosine < 1.0):
            raise UserError(f"neighbour_cosine must lie strictly between -1 and 1, got {self.neighbour_cosine}")
        return self

    @property
    def candidates(self) -> int:
        """The number of candidates per epoch: the setting, or the method's default."""
        return METHODS[self.method].default_candidates if self.num_candidates is None else self.num_candidates

    @property
    def accept_rule(self) -> str:
        """The acceptance rule in force: the method's own, or the setting."""
        return METHODS[self.method].accept or self.accept

    @property
    def gradient_used(self) -> str | None:
        """The gradient the search computes (None for a method that uses none)."""
        method = METHODS[self.method]
        if not method.needs_grad:
            return None
        return self.gradient or method.default_gradient

    @property
    def epochs(self) -> int:
        return 0 if METHODS[self.method].propose is None else self.max_epoch

    def record(self) -> dict:
        """The recorded settings (all but ``keep_epoch_images``), method defaults resolved."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "keep_epoch_images"}
        return {**values, "num_candidates": self.candidates, "accept": self.accept_rule,
                "gradient": self.gradient_used}
