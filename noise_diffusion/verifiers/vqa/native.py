"""VQAScore with vision-language models native to transformers (no remote code): LLaVA-1.5, Qwen2-VL / Qwen2.5-VL,
SmolVLM / Idefics3 (decoder-only) and InstructBLIP (FlanT5 encoder-decoder).

Each family writes its published chat format around the question, expands the image placeholder into as many image
tokens as its processor would, and builds ``pixel_values`` with differentiable torch preprocessing that follows the
checkpoint's ``preprocessor_config.json`` (see :mod:`.preprocess`). The score is exp(mean log p) of the answer tokens,
teacher-forced after the prompt.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from ...errors import UserError
from ..base import normalize
from .core import (DEFAULT_ANSWER, DEFAULT_QUESTION, VQAVerifier, check_options, mean_answer_logprob, pad_sequences,
                   positions_from_mask, take_resize_option)
from .preprocess import CLIP_MEAN, CLIP_STD, clip_pixels, clip_processor_settings, read_json, resize

LLAVA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


class DecoderVQAVerifier(VQAVerifier):
    """A decoder-only VLM: the prompt (with image tokens) then the answer, one forward pass per batch, answer tokens
    scored. Sequences of different lengths are padded on the left with an attention mask, so that every answer ends at
    the last position; the position ids count from each item's first real token (:meth:`extra_inputs`)."""

    #: appended to the answer text (an end-of-turn token, where the original VQAScore counts it)
    answer_suffix = ""
    #: put before the answer (SmolVLM's assistant turn starts with a space)
    answer_prefix = ""
    #: the softmax runs over the first ``vocab_size`` logits (None: all of them)
    vocab_size: int | None = None

    def __init__(self, model, tokenizer, image_config: dict, name: str, question_template: str | None = None,
                 answer_template: str | None = None, micro_batch: int | None = None,
                 checkpointing: bool = False) -> None:
        super().__init__(question_template or DEFAULT_QUESTION, answer_template or DEFAULT_ANSWER,
                         micro_batch=micro_batch)
        self.model, self.tokenizer, self.image_config, self.name = model, tokenizer, image_config, name
        self.freeze()
        self.set_checkpointing(checkpointing)

    def prompt(self, question: str, image_inputs: dict) -> str:
        raise NotImplementedError

    def image_inputs(self, images: Tensor) -> dict:
        """Model keyword arguments for images [B, 3, H, W] in [0, 1] (differentiable), plus private "_" keys."""
        raise NotImplementedError

    def extra_inputs(self, input_ids: Tensor, attention_mask: Tensor) -> dict:
        # positions as the unpadded sequence has them (RoPE only sees differences of positions, so a shift would change
        # only the rounding; positions from the mask are what generation with left padding uses)
        return {"position_ids": positions_from_mask(attention_mask)}

    def token(self, token_id: int) -> str:
        return self.tokenizer.convert_ids_to_tokens(int(token_id))

    @property
    def pad_id(self) -> int:
        """Padding id (masked out; any id but the image token's)."""
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return 0 if pad is None or pad == self.model.config.image_token_id else pad

    def sequence(self, question: str, answer: str, image_inputs: dict) -> tuple[list[int], int]:
        """One item's token ids (prompt with image tokens, then the answer) and the number of answer tokens."""
        prompt = self.prompt(question, image_inputs)
        prompt_ids = self.tokenizer(prompt.rstrip(" ")).input_ids
        ids = self.tokenizer(prompt + self.answer_prefix + answer + self.answer_suffix).input_ids
        if ids[: len(prompt_ids)] != prompt_ids or len(ids) <= len(prompt_ids):
            raise UserError(f"{self.name}: the answer {answer!r} does not tokenise apart from the prompt")
        return ids, len(ids) - len(prompt_ids)

    def answer_logprobs(self, images: Tensor, questions: Sequence[str], answers: Sequence[str]) -> Tensor:
        inputs = self.image_inputs(images)
        items = [self.sequence(q, a, inputs) for q, a in zip(questions, answers)]
        input_ids, mask = (t.to(self.device) for t in pad_sequences([ids for ids, _ in items], self.pad_id, "left"))
        n_answer = torch.tensor([n for _, n in items], device=self.device)
        n_max = int(n_answer.max())
        model_inputs = {k: v for k, v in inputs.items() if not k.startswith("_")}
        out = self.model(input_ids=input_ids, attention_mask=mask, use_cache=False, logits_to_keep=n_max + 1,
                         **model_inputs, **self.extra_inputs(input_ids, mask))
        logits = out.logits[:, :-1]
        if self.vocab_size is not None:
            logits = logits[..., : self.vocab_size]
        answer_mask = torch.arange(n_max, device=self.device) >= (n_max - n_answer)[:, None]
        return mean_answer_logprob(logits, input_ids[:, -n_max:], answer_mask)


class LlavaVerifier(DecoderVQAVerifier):
    """LLaVA-1.5 (``llava-hf``): VQAScore's LLaVA-1.5 prompt ``{system} USER: <image>\\n{q} ASSISTANT: {a}</s>``.

    Pixels: (square padding with the mean colour when the processor pads, or with ``pad_to_square=True`` as the
    original LLaVA-1.5 does), shortest-side bicubic resize, centre crop, CLIP normalisation.
    """

    answer_suffix = "</s>"

    def __init__(self, *args, pad_to_square: bool | None = None, system_message: str = LLAVA_SYSTEM, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pad = self.image_config["pad"] if pad_to_square is None else pad_to_square
        self.system_message = system_message
        cfg = self.model.config
        patches = (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2
        self.num_image_tokens = patches + (1 if cfg.vision_feature_select_strategy == "full" else 0)

    def preprocess(self, images: Tensor) -> Tensor:
        c = self.image_config
        return clip_pixels(images, c["size"], c["crop"], c["mean"], c["std"], pad=self.pad, antialias=self.antialias)

    def image_inputs(self, images: Tensor) -> dict:
        return {"pixel_values": self.preprocess(images).to(self.model.dtype)}

    def prompt(self, question: str, image_inputs: dict) -> str:
        image = self.token(self.model.config.image_token_id) * self.num_image_tokens
        return f"{self.system_message} USER: {image}\n{question} ASSISTANT: "


def qwen_pixels(images: Tensor, config: dict, antialias: bool = True) -> tuple[Tensor, list[int]]:
    """Qwen2-VL's image processor in torch: resize to multiples of patch*merge (``smart_resize``), normalise, and
    flatten into patches ordered (merge block row, merge block col, row in block, col in block), each patch repeated
    ``temporal_patch_size`` times. Returns ``pixel_values`` [B*N, C*T*P*P] (image after image) and one image's grid
    (t, h, w)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    p, m, t = config["patch_size"], config["merge_size"], config["temporal_patch_size"]
    b, c, h, w = images.shape
    new_h, new_w = smart_resize(h, w, factor=p * m, min_pixels=config["min_pixels"], max_pixels=config["max_pixels"])
    images = normalize(resize(images, new_h, new_w, antialias), config["mean"], config["std"])
    gh, gw = new_h // p, new_w // p
    patches = images.reshape(b, c, gh // m, m, p, gw // m, m, p).permute(0, 2, 5, 3, 6, 1, 4, 7)
    patches = patches[:, :, :, :, :, :, None].expand(*patches.shape[:6], t, p, p)
    return patches.reshape(b * gh * gw, c * t * p * p), [1, gh, gw]


def qwen_image_config(processor: dict) -> dict:
    size = processor.get("size") or {}
    return {
        "patch_size": processor.get("patch_size", 14), "merge_size": processor.get("merge_size", 2),
        "temporal_patch_size": processor.get("temporal_patch_size", 2),
        "min_pixels": processor.get("min_pixels", size.get("shortest_edge", 56 * 56)),
        "max_pixels": processor.get("max_pixels", size.get("longest_edge", 28 * 28 * 1280)),
        "mean": list(processor.get("image_mean", CLIP_MEAN)), "std": list(processor.get("image_std", CLIP_STD)),
    }


class QwenVLVerifier(DecoderVQAVerifier):
    """Qwen2-VL / Qwen2.5-VL with their chat format (default system prompt, ``<|vision_start|>`` image
    ``<|vision_end|>`` before the question); the answer is ``Yes`` without an end token, as VQAScore does for Qwen."""

    system_message = "You are a helpful assistant."

    def image_inputs(self, images: Tensor) -> dict:
        pixels, grid = qwen_pixels(images, self.image_config, self.antialias)
        grid_t = torch.tensor([grid] * images.shape[0], device=self.device)
        return {"pixel_values": pixels.to(self.model.dtype), "image_grid_thw": grid_t,
                "_tokens": math.prod(grid) // self.image_config["merge_size"] ** 2}

    def prompt(self, question: str, image_inputs: dict) -> str:
        cfg = self.model.config
        image = (self.token(cfg.vision_start_token_id) + self.token(cfg.image_token_id) * image_inputs["_tokens"]
                 + self.token(cfg.vision_end_token_id))
        return (f"<|im_start|>system\n{self.system_message}<|im_end|>\n<|im_start|>user\n{image}{question}<|im_end|>\n"
                "<|im_start|>assistant\n")

    def extra_inputs(self, input_ids: Tensor, attention_mask: Tensor) -> dict:
        # transformers 5 needs the token types (1 = image) to compute multimodal RoPE positions; it computes them from
        # the attention mask, skipping the padding
        return {"mm_token_type_ids": (input_ids == self.model.config.image_token_id).int()}


def smolvlm_image_config(processor: dict, vision_size: int) -> dict:
    max_size = (processor.get("max_image_size") or {}).get("longest_edge", vision_size)
    return {"size": int(max_size), "mean": list(processor.get("image_mean", [0.5] * 3)),
            "std": list(processor.get("image_std", [0.5] * 3)), "splitting": processor.get("do_image_splitting", True)}


class SmolVLMVerifier(DecoderVQAVerifier):
    """SmolVLM / Idefics3 with one global image (no tiling: ``do_image_splitting`` off, so the image is resized to
    ``max_image_size`` square), chat format ``<|im_start|>User:{image}{q}<end_of_utterance>\\nAssistant: {a}``."""

    answer_prefix = " "

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        cfg = self.model.config
        patches = (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2
        self.num_image_tokens = patches // cfg.scale_factor**2

    def preprocess(self, images: Tensor) -> Tensor:
        size = self.image_config["size"]
        # the processor's LANCZOS resize is approximated by antialiased bicubic
        return normalize(resize(images, size, size, self.antialias), self.image_config["mean"], self.image_config["std"])

    def image_inputs(self, images: Tensor) -> dict:
        return {"pixel_values": self.preprocess(images)[:, None].to(self.model.dtype)}

    def prompt(self, question: str, image_inputs: dict) -> str:
        image = (f"<fake_token_around_image><global-img>{self.token(self.model.config.image_token_id) * self.num_image_tokens}"
                 "<fake_token_around_image>")
        return f"<|im_start|>User:{image}{question}<end_of_utterance>\nAssistant:"


INSTRUCTBLIP_QUESTION = 'Question: Does this figure show "{prompt}"? Please answer yes or no.'
INSTRUCTBLIP_ANSWER = "yes"


class InstructBlipVerifier(VQAVerifier):
    """InstructBLIP-FlanT5: the question goes to the Q-Former and, after the query tokens, to the T5 encoder; the
    answer (lower-case ``yes`` with ``</s>``, VQAScore's InstructBLIP defaults) is teacher-forced in the decoder.
    Pixels: bicubic resize to the processor's square size (no crop), CLIP normalisation."""

    def __init__(self, model, tokenizer, qformer_tokenizer, image_config: dict, name: str,
                 question_template: str | None = None, answer_template: str | None = None,
                 micro_batch: int | None = None, checkpointing: bool = False) -> None:
        super().__init__(question_template or INSTRUCTBLIP_QUESTION, answer_template or INSTRUCTBLIP_ANSWER,
                         micro_batch=micro_batch)
        self.model, self.tokenizer, self.qformer_tokenizer = model, tokenizer, qformer_tokenizer
        self.image_config, self.name = image_config, name
        if getattr(model.config, "image_token_id", None) is None:
            raise UserError(f"{name}: config has no image_token_id (an old revision); use a current checkpoint")
        self.freeze()
        self.set_checkpointing(checkpointing)

    def preprocess(self, images: Tensor) -> Tensor:
        size = self.image_config["size"]
        return normalize(resize(images, size, size, self.antialias), self.image_config["mean"], self.image_config["std"])

    def answer_logprobs(self, images: Tensor, questions: Sequence[str], answers: Sequence[str]) -> Tensor:
        # every sequence is right-padded: T5's encoder positions are relative, the Q-Former's start at each item's
        # first token, and the decoder is causal
        cfg, tok, qtok = self.model.config, self.tokenizer, self.qformer_tokenizer
        prefix = [cfg.image_token_id] * cfg.num_query_tokens
        input_ids, mask = pad_sequences([prefix + tok(q).input_ids for q in questions], tok.pad_token_id or 0)
        qformer_ids, qformer_mask = pad_sequences([qtok(q).input_ids for q in questions], qtok.pad_token_id or 0)
        labels, label_mask = pad_sequences([tok(a).input_ids for a in answers], tok.pad_token_id or 0)
        input_ids, mask, qformer_ids, qformer_mask, labels, label_mask = (
            t.to(self.device) for t in (input_ids, mask, qformer_ids, qformer_mask, labels, label_mask))
        start = torch.full_like(labels[:, :1], cfg.text_config.decoder_start_token_id)
        out = self.model(pixel_values=self.preprocess(images).to(self.model.dtype), input_ids=input_ids,
                         attention_mask=mask, qformer_input_ids=qformer_ids, qformer_attention_mask=qformer_mask,
                         decoder_input_ids=torch.cat([start, labels[:, :-1]], 1), decoder_attention_mask=label_mask,
                         use_cache=False)
        return mean_answer_logprob(out.logits, labels, label_mask)


def _image_size(config: dict, default: int) -> int:
    size = config.get("size", default)
    if isinstance(size, dict):
        size = size.get("height", size.get("shortest_edge", default))
    return int(size)


def load_native_verifier(name_or_path: str, device="cpu", dtype: torch.dtype = torch.float32, **options) -> VQAVerifier:
    """Load a transformers-native VLM (Hub id or folder) as a VQAScore verifier; the family comes from its config."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoTokenizer

    config = AutoConfig.from_pretrained(name_or_path)
    allowed = {"question_template", "answer_template", "resize"}
    if config.model_type == "llava":
        allowed |= {"pad_to_square", "system_message"}
    check_options(options, allowed, config.model_type)
    resize_mode = take_resize_option(options)
    processor = read_json(name_or_path, "preprocessor_config.json")
    kind = config.model_type
    model = AutoModelForImageTextToText.from_pretrained(name_or_path, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if kind == "llava":
        image_config = clip_processor_settings(processor, config.vision_config.image_size)
        image_config["pad"] = bool(processor.get("do_pad", False))
        verifier = LlavaVerifier(model, tokenizer, image_config, str(name_or_path), **options)
    elif kind in ("qwen2_vl", "qwen2_5_vl"):
        verifier = QwenVLVerifier(model, tokenizer, qwen_image_config(processor), str(name_or_path), **options)
    elif kind in ("smolvlm", "idefics3"):
        image_config = smolvlm_image_config(processor, config.vision_config.image_size)
        verifier = SmolVLMVerifier(model, tokenizer, image_config, str(name_or_path), **options)
    elif kind == "instructblip":
        qformer_tokenizer = AutoTokenizer.from_pretrained(name_or_path, subfolder="qformer_tokenizer")
        image_config = {"size": _image_size(processor, config.vision_config.image_size),
                        "mean": list(processor.get("image_mean", CLIP_MEAN)), "std": list(processor.get("image_std", CLIP_STD))}
        verifier = InstructBlipVerifier(model, tokenizer, qformer_tokenizer, image_config, str(name_or_path), **options)
    else:
        raise UserError(f"{name_or_path!r}: model_type {kind!r} is not a supported VQA family")
    verifier.resize_mode = resize_mode
    return verifier.to(device)


NATIVE_HUB_IDS = {
    "llava-v1.5-7b": "llava-hf/llava-1.5-7b-hf",
    "llava-v1.5-13b": "llava-hf/llava-1.5-13b-hf",
    "instructblip-flant5-xl": "Salesforce/instructblip-flan-t5-xl",
    "instructblip-flant5-xxl": "Salesforce/instructblip-flan-t5-xxl",
    "qwen2.5-vl-3b": "Qwen/Qwen2.5-VL-3B-Instruct",
    "qwen2.5-vl-7b": "Qwen/Qwen2.5-VL-7B-Instruct",
    "smolvlm-256m": "HuggingFaceTB/SmolVLM-256M-Instruct",
}
NATIVE_MODEL_TYPES = ("llava", "qwen2_vl", "qwen2_5_vl", "smolvlm", "idefics3", "instructblip")
