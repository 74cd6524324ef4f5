"""Scores of a run's saved images by a verifier, one small JSON file per verifier beside ``result.json``.

Two kinds: ``heldout_<verifier>.json``, by a verifier other than the one that guided the search (the held-out
judge), and ``png_<verifier>.json``, by the guiding verifier itself, of the saved PNGs read back through PIL (so
every method's row is scored alike, from its image file). A :class:`ScoreFile` names one; :class:`ImageScores` is
what it holds.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .atomic import read_json, write_json_atomic
from .names import safe_folder_name

#: file-name prefix of each kind
PREFIXES = {"held_out": "heldout_", "png": "png_"}


@dataclass(frozen=True)
class ImageScores:
    """A verifier's scores of a run's initial and best image."""

    verifier: str
    initial_score: float
    best_score: float

    def problem(self) -> str | None:
        """Why these scores may not be saved (None when they may)."""
        for key in ("initial_score", "best_score"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                return f"{key!r} must be a finite number, got {value!r}"
        return None

    def to_json(self) -> dict:
        return {"verifier": self.verifier, "initial_score": self.initial_score, "best_score": self.best_score}

    @classmethod
    def from_json(cls, data: Any) -> "ImageScores":
        """The scores ``data`` holds; ValueError naming the problem."""
        if not isinstance(data, dict) or not isinstance(data.get("verifier"), str):
            raise ValueError("expected an object with 'verifier', 'initial_score' and 'best_score'")
        scores = cls(data["verifier"], data.get("initial_score"), data.get("best_score"))
        problem = scores.problem()
        if problem is not None:
            raise ValueError(problem)
        return scores


@dataclass(frozen=True)
class ScoreFile:
    """The score file of one ``kind`` (``held_out`` or ``png``) and one verifier, in any run folder."""

    kind: str
    verifier: str

    @classmethod
    def held_out(cls, verifier: str) -> "ScoreFile":
        return cls("held_out", verifier)

    @classmethod
    def png(cls, verifier: str) -> "ScoreFile":
        return cls("png", verifier)

    @property
    def label(self) -> str:
        return "held-out" if self.kind == "held_out" else "PNG re-score"

    def path(self, folder: str | os.PathLike) -> Path:
        return Path(folder) / f"{PREFIXES[self.kind]}{safe_folder_name(self.verifier)}.json"

    def read(self, folder: str | os.PathLike) -> ImageScores | None:
        """The valid scores of this verifier in ``folder`` (None when missing, damaged or another verifier's)."""
        try:
            scores = ImageScores.from_json(read_json(self.path(folder)))
        except (OSError, ValueError, RecursionError):
            return None
        return scores if scores.verifier == self.verifier else None

    def write(self, folder: str | os.PathLike, scores: ImageScores) -> None:
        write_json_atomic(self.path(folder), scores.to_json())


def scores_in(folder: str | os.PathLike, kind: str) -> tuple[dict[str, ImageScores], list[str]]:
    """Every score file of ``kind`` in ``folder``: verifier -> scores, and the reasons of the files that are not
    valid."""
    found, problems = {}, []
    for file in sorted(Path(folder).glob(f"{PREFIXES[kind]}*.json")):
        try:
            scores = ImageScores.from_json(read_json(file))
        except (OSError, ValueError, RecursionError) as error:
            problems.append(f"{file}: {error}")
            continue
        found[scores.verifier] = scores
    return found, problems

