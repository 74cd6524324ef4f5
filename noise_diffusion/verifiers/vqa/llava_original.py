"""LLaVA-1.5 checkpoints in the original LLaVA code's layout (``liuhaotian/llava-v1.5-*``, ShareGPT4V), loaded into
transformers' ``LlavaForConditionalGeneration`` by renaming keys (the mapping transformers' own LLaVA conversion uses).

Original layout (config.json: a LLaMA config plus ``mm_vision_tower``, ``mm_projector_type``, ``mm_hidden_size``,
``mm_vision_select_layer``, ``mm_vision_select_feature``): ``model.embed_tokens``, ``model.layers.N``, ``model.norm``,
``lm_head``, ``model.mm_projector.{0,2}`` and, usually, ``model.vision_tower.vision_tower.vision_model.*``. The
original has no image token in its vocabulary (it splices the image at a -200 placeholder), so one row is appended to
the embeddings for the placeholder (its embedding is replaced by the image features) and the softmax is taken over
the original vocabulary only. The prompt is tokenised in chunks around ``<image>`` as the original does.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ...errors import UserError
from .checkpoint import describe_keys, read_state_dict, resolve_folder
from .core import check_options, take_resize_option
from .native import LLAVA_SYSTEM, LlavaVerifier
from .preprocess import clip_processor_settings, read_json

#: checkpoints in this layout that VQAScore (and the Noise Diffusion paper) use; not tried on the real weights here
ORIGINAL_LLAVA_HUB_IDS = {"sharegpt4v-7b": "Lin-Chen/ShareGPT4V-7B", "sharegpt4v-13b": "Lin-Chen/ShareGPT4V-13B"}

IGNORED = re.compile(r".*(rotary_emb\.inv_freq|position_ids)$")
PROJECTOR = {"model.mm_projector.0.": "model.multi_modal_projector.linear_1.",
             "model.mm_projector.2.": "model.multi_modal_projector.linear_2."}


def map_original_llava_key(key: str) -> str | None:
    if IGNORED.fullmatch(key):
        return None
    for old, new in PROJECTOR.items():
        if key.startswith(old):
            return new + key[len(old) :]
    if key.startswith("model.vision_tower.vision_tower."):
        rest = key[len("model.vision_tower.vision_tower.") :]
        return "model.vision_tower." + rest.removeprefix("vision_model.")
    if key.startswith("model."):
        return "model.language_model." + key[len("model.") :]
    return key  # lm_head.weight


def original_llava_key(mapped: str) -> str:
    """The inverse of :func:`map_original_llava_key` (to name missing keys as the checkpoint would)."""
    for old, new in PROJECTOR.items():
        if mapped.startswith(new):
            return old + mapped[len(new) :]
    if mapped.startswith("model.vision_tower."):
        return "model.vision_tower.vision_tower.vision_model." + mapped[len("model.vision_tower.") :]
    if mapped.startswith("model.language_model."):
        return "model." + mapped[len("model.language_model.") :]
    return mapped


def load_original_llava(folder: Path, dtype: torch.dtype = torch.float32, vision_tower: str | None = None):
    """``LlavaForConditionalGeneration`` holding an original-layout checkpoint; returns (model, vocabulary size)."""
    from accelerate import init_empty_weights
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlavaConfig, LlavaForConditionalGeneration

    raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    tower_name = vision_tower or raw["mm_vision_tower"]
    if raw.get("mm_projector_type", "mlp2x_gelu") != "mlp2x_gelu":
        raise UserError(f"{str(folder)!r}: mm_projector_type {raw.get('mm_projector_type')!r} is not LLaVA-1.5's mlp2x_gelu")
    vocab = raw["vocab_size"]
    text = {k: v for k, v in raw.items() if not k.startswith("mm_") and k not in ("architectures", "model_type")}
    text.update(model_type="llama", vocab_size=vocab + 1)
    config = LlavaConfig(
        text_config=text, vision_config=CLIPVisionConfig.from_pretrained(tower_name).to_dict(),
        image_token_index=vocab, projector_hidden_act="gelu",
        vision_feature_layer=raw.get("mm_vision_select_layer", -2),
        vision_feature_select_strategy="default" if raw.get("mm_vision_select_feature", "patch") == "patch" else "full",
    )
    original = read_state_dict(folder, dtype)
    state = {new: value for key, value in original.items() if (new := map_original_llava_key(key)) is not None}
    if not any(k.startswith("model.vision_tower.") for k in state):  # the tower from its own repo
        tower = CLIPVisionModel.from_pretrained(tower_name, dtype=dtype).state_dict()
        state.update({"model.vision_tower." + k.removeprefix("vision_model."): v for k, v in tower.items()
                      if not IGNORED.fullmatch(k)})
    for key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        if key in state:  # one more row: the image placeholder
            state[key] = torch.cat([state[key], state[key].new_zeros(1, state[key].shape[1])])
    with init_empty_weights(include_buffers=False):  # buffers (positions, RoPE frequencies) computed as usual
        model = LlavaForConditionalGeneration(config)
    expected = {k for k in model.state_dict() if not IGNORED.fullmatch(k)}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if getattr(config.text_config, "tie_word_embeddings", False) and missing == ["lm_head.weight"]:
        missing = []
    if missing or unexpected:
        back = {map_original_llava_key(k): k for k in original}
        parts = [f"missing keys: {describe_keys(original_llava_key(k) for k in missing)}"] if missing else []
        if unexpected:
            parts.append(f"unexpected keys: {describe_keys(back.get(k, k) for k in unexpected)}")
        raise UserError(f"checkpoint {str(folder)!r} does not match the LLaVA-1.5 layout ({'; '.join(parts)})")
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    return model.to(dtype), vocab


class OriginalLlavaVerifier(LlavaVerifier):
    """VQAScore's LLaVA-1.5 scoring on an original-layout checkpoint: the chunks either side of ``<image>`` are
    tokenised separately (the second without its BOS), answer ``Yes</s>``, softmax over the original vocabulary."""

    def __init__(self, *args, vocab_size: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.vocab_size = vocab_size

    def sequence(self, question: str, answer: str, image_inputs: dict) -> tuple[list[int], int]:
        before = f"{self.system_message} USER: "
        after = f"\n{question} ASSISTANT: "
        tok = self.tokenizer
        first = tok(before).input_ids
        prompt_after = _drop_bos(tok, tok(after.rstrip(" ")).input_ids)
        full_after = _drop_bos(tok, tok(after + answer + self.answer_suffix).input_ids)
        if full_after[: len(prompt_after)] != prompt_after or len(full_after) <= len(prompt_after):
            raise UserError(f"{self.name}: the answer {answer!r} does not tokenise apart from the prompt")
        ids = first + [self.model.config.image_token_id] * self.num_image_tokens + full_after
        return ids, len(full_after) - len(prompt_after)


def _drop_bos(tokenizer, ids: list[int]) -> list[int]:
    return ids[1:] if ids and ids[0] == tokenizer.bos_token_id else ids


def is_original_llava(name_or_path: str) -> bool:
    return "mm_vision_tower" in read_json(name_or_path, "config.json")


def load_original_llava_verifier(name_or_path: str, device="cpu", dtype: torch.dtype = torch.float32,
                               vision_tower: str | None = None, **options) -> OriginalLlavaVerifier:
    """Load ``liuhaotian/llava-v1.5-*``-style checkpoints (and ShareGPT4V's) as VQAScore verifiers; images are padded
    to a square as the original LLaVA-1.5 does (``image_aspect_ratio = "pad"``)."""
    from transformers import AutoTokenizer

    check_options(options, {"question_template", "answer_template", "pad_to_square", "system_message", "resize"},
                  "LLaVA-1.5")
    resize_mode = take_resize_option(options)
    folder = resolve_folder(name_or_path)
    model, vocab = load_original_llava(folder, dtype=dtype, vision_tower=vision_tower)
    tower = vision_tower or json.loads((folder / "config.json").read_text(encoding="utf-8"))["mm_vision_tower"]
    image_config = clip_processor_settings(read_json(tower, "preprocessor_config.json"), model.config.vision_config.image_size)
    image_config["pad"] = True
    options.setdefault("system_message", LLAVA_SYSTEM)
    verifier = OriginalLlavaVerifier(model, AutoTokenizer.from_pretrained(folder), image_config, str(name_or_path),
                                 vocab_size=vocab, **options)
    verifier.resize_mode = resize_mode
    return verifier.to(device)
