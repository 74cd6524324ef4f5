"""VQAScore verifiers: CLIP-FlanT5 (the paper's), transformers-native vision-language models, and LLaVA-1.5 /
ShareGPT4V checkpoints in the original LLaVA layout.

Importing this package registers short names and config ``model_type``\\ s (see
:func:`noise_diffusion.verifiers.register_verifier`). Every loader accepts ``question_template=`` and ``answer_template=``
(``{prompt}`` stands for the prompt). See docs/verifiers.md.
"""

from __future__ import annotations

from ..registry import register_verifier
from .clip_t5 import HUB_IDS as CLIP_T5_HUB_IDS
from .clip_t5 import CLIPT5Verifier, load_clip_t5_verifier
from .core import DEFAULT_ANSWER, DEFAULT_QUESTION, VQAVerifier
from .llava_original import ORIGINAL_LLAVA_HUB_IDS, is_original_llava, load_original_llava_verifier
from .native import NATIVE_HUB_IDS, NATIVE_MODEL_TYPES, load_native_verifier

#: short name -> Hub id of every registered VQA verifier
HUB_IDS: dict[str, str] = {**CLIP_T5_HUB_IDS, **NATIVE_HUB_IDS, **ORIGINAL_LLAVA_HUB_IDS}

register_verifier(CLIP_T5_HUB_IDS, model_types=("clip_t5",))(load_clip_t5_verifier)
register_verifier(NATIVE_HUB_IDS, model_types=[t for t in NATIVE_MODEL_TYPES if t != "llava"])(load_native_verifier)
register_verifier(ORIGINAL_LLAVA_HUB_IDS, model_types=("share4v",))(load_original_llava_verifier)


@register_verifier(model_types=("llava",))
def load_llava_verifier(name_or_path: str, **options) -> VQAVerifier:
    """``model_type`` llava: transformers' layout (llava-hf) or the original LLaVA code's (``mm_vision_tower``)."""
    loader = load_original_llava_verifier if is_original_llava(name_or_path) else load_native_verifier
    return loader(name_or_path, **options)


__all__ = ["VQAVerifier", "CLIPT5Verifier", "HUB_IDS", "DEFAULT_QUESTION", "DEFAULT_ANSWER", "load_clip_t5_verifier",
           "load_native_verifier", "load_original_llava_verifier", "load_llava_verifier"]
