"""VQAScore verifiers: CLIP-FlanT5 (the paper's), transformers-native vision-language models, and LLaVA-1.5 /
ShareGPT4V checkpoints in the original LLaVA layout.

Importing this package registers short names and config ``model_type``\\ s (see
:func:`noise_diffusion.scorers.register_verifier`). Every loader accepts ``question_template=`` and ``answer_template=``
(``{prompt}`` stands for the prompt). See docs/verifiers.md.
"""

from __future__ import annotations

from ..registry import register_verifier
from .clip_t5 import HUB_IDS as CLIP_T5_HUB_IDS
from .clip_t5 import CLIPT5Scorer, load_clip_t5_scorer
from .core import DEFAULT_ANSWER, DEFAULT_QUESTION, VQAScorer
from .llava_original import ORIGINAL_LLAVA_HUB_IDS, is_original_llava, load_original_llava_scorer
from .native import NATIVE_HUB_IDS, NATIVE_MODEL_TYPES, load_native_scorer

#: short name -> Hub id of every registered VQA verifier
HUB_IDS: dict[str, str] = {**CLIP_T5_HUB_IDS, **NATIVE_HUB_IDS, **ORIGINAL_LLAVA_HUB_IDS}

register_verifier(CLIP_T5_HUB_IDS, model_types=("clip_t5",))(load_clip_t5_scorer)
register_verifier(NATIVE_HUB_IDS, model_types=[t for t in NATIVE_MODEL_TYPES if t != "llava"])(load_native_scorer)
register_verifier(ORIGINAL_LLAVA_HUB_IDS, model_types=("share4v",))(load_original_llava_scorer)


@register_verifier(model_types=("llava",))
def load_llava_scorer(name_or_path: str, **options) -> VQAScorer:
    """``model_type`` llava: transformers' layout (llava-hf) or the original LLaVA code's (``mm_vision_tower``)."""
    loader = load_original_llava_scorer if is_original_llava(name_or_path) else load_native_scorer
    return loader(name_or_path, **options)


__all__ = ["VQAScorer", "CLIPT5Scorer", "HUB_IDS", "DEFAULT_QUESTION", "DEFAULT_ANSWER", "load_clip_t5_scorer",
           "load_native_scorer", "load_original_llava_scorer", "load_llava_scorer"]
