"""The toy world the project ships: a trained tiny Stable Diffusion pipeline for two-digit canvases and two verifiers.

Importing this package registers the short name ``toy-digits`` (``--sd_version toy-digits``) for the committed
pipeline folder; the verifiers ``toy-digits-cnn`` and ``toy-digits-heldout`` live in ``noise_diffusion.scorers.toy``.
See ``docs/toy_world.md``.
"""

from __future__ import annotations

from pathlib import Path

from ..generators import MODEL_ALIASES

ASSETS = Path(__file__).resolve().parent / "assets"
PIPELINE = ASSETS / "toy-digits"

MODEL_ALIASES["toy-digits"] = str(PIPELINE)
