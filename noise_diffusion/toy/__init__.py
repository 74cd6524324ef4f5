"""The toy world the project ships: a trained tiny Stable Diffusion pipeline for two-digit canvases and its verifiers.

Importing this package registers the short model name ``toy-digits`` (``--sd_version toy-digits``) for the shipped
pipeline folder, and the verifiers ``toy-digits-cnn`` (the guide), ``toy-digits-heldout`` and
``toy-digits-heldout-resnet`` (held-out judges; :mod:`.verifiers`). The attention world (:mod:`.world_attn`) is
``toy-digits-attn``, with the same verifiers as ``toy-digits-attn-cnn``, ``toy-digits-attn-heldout`` and
``toy-digits-attn-heldout-resnet``.
See ``docs/toy_world.md``.
"""

from __future__ import annotations

from pathlib import Path

from ..generators.base import MODEL_ALIASES

ASSETS = Path(__file__).resolve().parent / "assets"
PIPELINE = ASSETS / "toy-digits"
PIPELINE_ATTN = ASSETS / "toy-digits-attn"

MODEL_ALIASES.add("toy-digits", str(PIPELINE))
MODEL_ALIASES.add("toy-digits-attn", str(PIPELINE_ATTN))

from . import verifiers  # noqa: E402,F401  (registers the toy verifiers)
