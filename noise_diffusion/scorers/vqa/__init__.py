"""VQAScore verifiers: CLIP-FlanT5 (the paper's), transformers-native vision-language models, and LLaVA-1.5 /
ShareGPT4V checkpoints in the original LLaVA layout.

Importing this package registers short names in :data:`noise_diffusion.scorers.SCORERS` and config ``model_type``\\ s in
:data:`noise_diffusion.scorers.ARCHITECTURES`. Every loader accepts ``question_template=`` and ``answer_template=``
(``{prompt}`` stands for the prompt). See docs/verifiers.md.
"""

from __future__ import annotations

from .. import ARCHITECTURES, SCORERS
from .clip_t5 import HUB_IDS as CLIP_T5_HUB_IDS
from .clip_t5 import CLIPT5Scorer, load_clip_t5_scorer
from .core import DEFAULT_ANSWER, DEFAULT_QUESTION, VQAScorer
from .llava_original import ORIGINAL_LLAVA_HUB_IDS, is_original_llava, load_original_llava_scorer
from .native import NATIVE_HUB_IDS, NATIVE_MODEL_TYPES, load_native_scorer

#: short name -> Hub id of every registered VQA verifier
HUB_IDS: dict[str, str] = dict(CLIP_T5_HUB_IDS)


def _short(loader, hub_id: str):
    return lambda device="cpu", dtype=None, **options: loader(hub_id, device=device, dtype=dtype, **options)


def _register(loader, hub_ids: dict[str, str], model_types: tuple[str, ...]) -> None:
    HUB_IDS.update(hub_ids)
    for short, hub_id in hub_ids.items():
        SCORERS[short] = _short(loader, hub_id)
    for model_type in model_types:
        ARCHITECTURES[model_type] = loader


def _dtype_default(loader):
    """Loaders take ``dtype=None`` as float32 (the registry passes the resolved dtype, bf16 on GPU by default)."""
    import torch

    def wrapped(name_or_path, device="cpu", dtype=None, **options):
        return loader(name_or_path, device=device, dtype=dtype or torch.float32, **options)

    return wrapped


_register(_dtype_default(load_clip_t5_scorer), CLIP_T5_HUB_IDS, ("clip_t5",))
_register(_dtype_default(load_native_scorer), NATIVE_HUB_IDS, NATIVE_MODEL_TYPES)


def _load_llava(name_or_path, **kwargs):
    """``model_type`` llava: transformers' layout (llava-hf) or the original LLaVA code's (``mm_vision_tower``)."""
    loader = load_original_llava_scorer if is_original_llava(name_or_path) else load_native_scorer
    return loader(name_or_path, **kwargs)


ARCHITECTURES["llava"] = _dtype_default(_load_llava)
_register(_dtype_default(load_original_llava_scorer), ORIGINAL_LLAVA_HUB_IDS, ("share4v",))

__all__ = ["VQAScorer", "CLIPT5Scorer", "HUB_IDS", "DEFAULT_QUESTION", "DEFAULT_ANSWER", "load_clip_t5_scorer",
           "load_native_scorer", "load_original_llava_scorer"]
