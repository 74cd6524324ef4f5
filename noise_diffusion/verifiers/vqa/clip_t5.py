"""CLIP-FlanT5 (Lin et al., VQAScore, ECCV 2024), the verifier of Noise Diffusion's paper, on plain transformers parts.

Architecture (facts of the published ``zhiqiulin/clip-flant5-xxl`` / ``-xl`` checkpoints, config ``model_type``
``clip_t5``): a CLIP ViT-L/14-336 vision tower (``mm_vision_tower``; features of layer ``mm_vision_select_layer`` = -2,
patch tokens without CLS), a projector ``mm_projector`` of type ``mlp2x_gelu`` (Linear, GELU, Linear), and a FlanT5
encoder-decoder whose encoder input holds the projected image features where the ``<image>`` placeholder stands.

The prompt is the LLaVA-1.5 chat format ``{system} USER: <image>\\n{question} ASSISTANT: ``; the text on each side of
``<image>`` is tokenised on its own (so each side ends with ``</s>``), the answer is tokenised with its ``</s>``, and
the score is exp(mean log p) over the answer tokens, the softmax taken over the tokenizer's vocabulary (the original
resizes the embeddings to ``len(tokenizer)``). Images are padded to a square with the CLIP mean colour, then resized
and centre-cropped to 336 and normalised, as the original's ``image_aspect_ratio = "pad"``.

Checkpoint keys (original layout): ``vision_tower.vision_tower.<CLIPVisionModel key>`` (optional: otherwise the tower
comes from ``mm_vision_tower``; transformers 4 writes the tower keys with a ``vision_model.`` part that transformers 5's
``CLIPVisionModel`` no longer has, and both spellings load), ``mm_projector.{0,2}.{weight,bias}``, and T5's own keys
(``shared.weight``, ``encoder.block...``, ``lm_head.weight``; the alias ``embed_tokens.weight`` is accepted).

FlanT5 (T5 v1.1) has its own output layer: its ``config.json`` says ``tie_word_embeddings: false``. transformers 5's
``T5Config`` always reports ``tie_word_embeddings = True`` (keeping the file's ``false`` only as
``scale_decoder_outputs = False``), so whether ``lm_head.weight`` is tied is read from the file itself.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from ...errors import UserError
from .checkpoint import describe_keys, read_state_dict, resolve_folder
from .core import VQAVerifier, check_options, mean_answer_logprob, pad_sequences, take_resize_option
from .preprocess import clip_pixels, clip_processor_settings, read_json

SYSTEM_MESSAGE = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
IMAGE_PLACEHOLDER = "<image>"

HUB_IDS = {"clip-flant5-xxl": "zhiqiulin/clip-flant5-xxl", "clip-flant5-xl": "zhiqiulin/clip-flant5-xl"}
#: the tokenizer VQAScore pairs with each published checkpoint
CHECKPOINT_TOKENIZERS = {"zhiqiulin/clip-flant5-xxl": "google/flan-t5-xxl", "zhiqiulin/clip-flant5-xl": "google/flan-t5-xl"}
#: tokenizer of the checkpoint (not shipped in the checkpoint repos), by T5 width
TOKENIZERS = {4096: "google/flan-t5-xxl", 2048: "google/flan-t5-xl", 1024: "google/flan-t5-large", 768: "google/flan-t5-base"}

# Keys that old checkpoints carry and that hold nothing to load.
IGNORED_KEYS = (re.compile(r".*position_ids$"), re.compile(r".*decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight$"))
# T5's tied aliases of ``shared.weight`` (``embed_tokens.weight`` is the original class's alias of the encoder's).
TIED_ALIASES = ("embed_tokens.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
TOWER_PREFIX = "vision_tower.vision_tower."


def build_projector(kind: str, in_features: int, out_features: int) -> nn.Module:
    """``mm_projector_type``: ``linear`` or ``mlp{N}x_gelu`` (N Linear layers with GELU between them)."""
    if kind == "linear":
        return nn.Linear(in_features, out_features)
    match = re.fullmatch(r"mlp(\d+)x_gelu", kind)
    if not match:
        raise UserError(f"unsupported mm_projector_type {kind!r} (expected 'linear' or 'mlpNx_gelu')")
    layers: list[nn.Module] = [nn.Linear(in_features, out_features)]
    for _ in range(1, int(match.group(1))):
        layers += [nn.GELU(), nn.Linear(out_features, out_features)]
    return nn.Sequential(*layers)


class CLIPT5(nn.Module):
    """Vision tower + projector + T5; :meth:`answer_logits` runs a batch of images with token ids on either side."""

    def __init__(self, t5_config, vision_tower: nn.Module) -> None:
        super().__init__()
        from transformers import T5ForConditionalGeneration

        self.vision_tower = vision_tower
        self.mm_projector = build_projector(
            getattr(t5_config, "mm_projector_type", "mlp2x_gelu"), vision_tower.config.hidden_size, t5_config.d_model
        )
        self.language_model = T5ForConditionalGeneration(t5_config)
        self.select_layer = int(getattr(t5_config, "mm_vision_select_layer", -2))
        self.select_feature = getattr(t5_config, "mm_vision_select_feature", "patch")

    def image_features(self, pixels: Tensor) -> Tensor:
        hidden = self.vision_tower(pixel_values=pixels, output_hidden_states=True).hidden_states[self.select_layer]
        if self.select_feature == "patch":
            hidden = hidden[:, 1:]
        return self.mm_projector(hidden)

    def answer_logits(self, pixels: Tensor, before: Sequence[Tensor], after: Sequence[Tensor], answers: Tensor,
                      answer_mask: Tensor) -> Tensor:
        """Decoder logits [B, T, V] for teacher-forced ``answers`` [B, T] (right-padded, ``answer_mask`` 1 on real
        tokens); item i's encoder input is ``before[i]``, the features of ``pixels[i]``, ``after[i]`` (ids [L_i]),
        right-padded to the longest with an attention mask (T5's positions are relative, so padding on the right
        changes nothing for the real tokens)."""
        embed = self.language_model.get_input_embeddings()
        image = self.image_features(pixels).to(embed.weight.dtype)
        rows = [torch.cat([embed(b), image[i], embed(a)]) for i, (b, a) in enumerate(zip(before, after))]
        length = max(len(r) for r in rows)
        inputs = torch.stack([nn.functional.pad(r, (0, 0, 0, length - len(r))) for r in rows])
        mask = torch.stack([(torch.arange(length, device=inputs.device) < len(r)).long() for r in rows])
        start = torch.full_like(answers[:, :1], self.language_model.config.decoder_start_token_id)
        decoder_ids = torch.cat([start, answers[:, :-1]], 1)
        out = self.language_model(inputs_embeds=inputs, attention_mask=mask, decoder_input_ids=decoder_ids,
                                  decoder_attention_mask=answer_mask, use_cache=False)
        return out.logits

    def tie(self, tied_head: bool) -> None:
        """Share the input embeddings; the output layer too only when the checkpoint's own config ties it."""
        lm = self.language_model
        lm.encoder.embed_tokens.weight = lm.shared.weight
        lm.decoder.embed_tokens.weight = lm.shared.weight
        if tied_head:
            lm.lm_head.weight = lm.shared.weight


def map_original_key(key: str) -> str | None:
    """Original checkpoint key -> key of :class:`CLIPT5` (None: an alias or a key with nothing to load)."""
    if any(p.fullmatch(key) for p in IGNORED_KEYS) or key == "embed_tokens.weight":
        return None
    if key.startswith(TOWER_PREFIX):
        return "vision_tower." + key[len(TOWER_PREFIX) :].removeprefix("vision_model.")
    if key.startswith("mm_projector."):
        return key
    return "language_model." + key


def original_key(key: str, tower_prefix: str = TOWER_PREFIX) -> str:
    """The inverse of :func:`map_original_key` (to name missing keys as the checkpoint would); ``tower_prefix`` is
    the checkpoint's own spelling of the tower keys (with or without ``vision_model.``)."""
    if key.startswith("language_model."):
        return key[len("language_model.") :]
    if key.startswith("vision_tower."):
        return tower_prefix + key[len("vision_tower.") :]
    return key


def ties_output_layer(config: dict) -> bool:
    """Whether a checkpoint's ``config.json`` (as written) ties T5's ``lm_head`` to the embeddings: transformers 4's
    default is to tie, FlanT5's file says ``false``."""
    return config.get("tie_word_embeddings", True) is not False


def load_clip_t5(folder: str | Path, dtype: torch.dtype = torch.float32, vision_tower: str | None = None) -> CLIPT5:
    """Build :class:`CLIPT5` from a checkpoint folder in the original layout; unknown or missing keys are errors."""
    from accelerate import init_empty_weights
    from transformers import CLIPVisionConfig, CLIPVisionModel, T5Config

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if "mm_vision_tower" not in config and vision_tower is None:
        raise UserError(f"{str(folder)!r} is not a CLIP-T5 checkpoint: its config.json has no mm_vision_tower")
    tower_name = vision_tower or config["mm_vision_tower"]
    t5_config = T5Config(**{k: v for k, v in config.items() if k not in ("model_type", "architectures")})
    original = read_state_dict(folder, dtype)
    state = {new: value for key, value in original.items() if (new := map_original_key(key)) is not None}
    has_tower = any(k.startswith("vision_tower.") for k in state)
    tied_head = ties_output_layer(config)
    if not tied_head and "language_model.lm_head.weight" not in state:
        raise UserError(f"checkpoint {str(folder)!r} has no lm_head.weight, which its config.json "
                        "(tie_word_embeddings: false) says is the model's own output layer")

    vision_config = CLIPVisionConfig.from_pretrained(tower_name)
    with init_empty_weights(include_buffers=False):  # no random init of 11B weights; buffers computed as usual
        model = CLIPT5(t5_config, CLIPVisionModel(vision_config) if has_tower else _ConfigOnly(vision_config))
    expected = set(model.state_dict())
    optional = {"language_model." + k for k in TIED_ALIASES}
    if tied_head:
        optional.add("language_model.lm_head.weight")
    missing = sorted(expected - set(state) - optional)
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        back = {map_original_key(k): k for k in original}
        prefix = TOWER_PREFIX + ("vision_model." if any(k.startswith(TOWER_PREFIX + "vision_model.") for k in original) else "")
        parts = []
        if missing:
            parts.append(f"missing keys: {describe_keys(original_key(k, prefix) for k in missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {describe_keys(back.get(k, k) for k in unexpected)}")
        raise UserError(f"checkpoint {str(folder)!r} does not match CLIP-T5 ({'; '.join(parts)})")
    model.load_state_dict(state, strict=False, assign=True)
    model.tie(tied_head)
    if not has_tower:  # the checkpoint leaves the vision tower to its own repo, as the original code loads it
        model.vision_tower = CLIPVisionModel.from_pretrained(tower_name, dtype=dtype)
    return model.to(dtype)


class _ConfigOnly(nn.Module):
    """Placeholder vision tower (no weights) that only carries the config while the checkpoint is matched."""

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config


class CLIPT5Verifier(VQAVerifier):
    """VQAScore with CLIP-FlanT5: exp(mean log p) of the answer tokens (with ``</s>``) given image and question."""

    def __init__(self, model: CLIPT5, tokenizer, processor: dict, question_template: str | None = None,
                 answer_template: str | None = None, system_message: str = SYSTEM_MESSAGE, pad: bool = True,
                 name: str = "clip-t5", micro_batch: int | None = None, checkpointing: bool = False) -> None:
        super().__init__(question_template, answer_template, micro_batch=micro_batch)
        self.model, self.tokenizer, self.processor = model, tokenizer, processor
        self.system_message, self.pad, self.name = system_message, pad, name
        self.vocab_size = len(tokenizer)
        self.freeze()
        self.set_checkpointing(checkpointing)

    def preprocess(self, images: Tensor) -> Tensor:
        p = self.processor
        return clip_pixels(images, p["size"], p["crop"], p["mean"], p["std"], pad=self.pad, antialias=self.antialias)

    def encoder_text(self, question: str) -> tuple[str, str]:
        """The text before and after the image placeholder (LLaVA-1.5's chat format with its system message)."""
        return f"{self.system_message} USER: ", f"\n{question} ASSISTANT: "

    def token_ids(self, text: str) -> Tensor:
        return torch.tensor(self.tokenizer(text).input_ids, dtype=torch.long, device=self.device)

    def answer_logprobs(self, images: Tensor, questions: Sequence[str], answers: Sequence[str]) -> Tensor:
        texts = [self.encoder_text(q) for q in questions]
        pad_id = getattr(self.tokenizer, "pad_token_id", None) or 0
        answer_ids, answer_mask = pad_sequences([self.tokenizer(a).input_ids for a in answers], pad_id)
        answer_ids, answer_mask = answer_ids.to(self.device), answer_mask.to(self.device)
        pixels = self.preprocess(images).to(self.model.language_model.dtype)
        logits = self.model.answer_logits(pixels, [self.token_ids(b) for b, _ in texts],
                                          [self.token_ids(a) for _, a in texts], answer_ids, answer_mask)
        return mean_answer_logprob(logits[..., : self.vocab_size], answer_ids, answer_mask)

    def settings(self) -> dict:
        return {**super().settings(), "system_message": self.system_message, "pad_to_square": self.pad}


def load_clip_t5_verifier(name_or_path: str, device="cpu", dtype: torch.dtype = torch.float32, tokenizer: str | None = None,
                        vision_tower: str | None = None, **options) -> CLIPT5Verifier:
    """Load a CLIP-T5 checkpoint (short name, Hub id or folder) as a verifier; ``options`` go to :class:`CLIPT5Verifier`."""
    from transformers import AutoTokenizer

    check_options(options, {"question_template", "answer_template", "system_message", "pad", "resize"}, "CLIP-T5")
    resize_mode = take_resize_option(options)
    hub_id = HUB_IDS.get(name_or_path, name_or_path)
    tokenizer = tokenizer or CHECKPOINT_TOKENIZERS.get(hub_id)
    folder = resolve_folder(hub_id)
    model = load_clip_t5(folder, dtype=dtype, vision_tower=vision_tower)
    tower_name = vision_tower or model.language_model.config.mm_vision_tower
    if tokenizer is None:
        has_own = any((folder / f).is_file() for f in ("tokenizer.json", "spiece.model", "tokenizer_config.json"))
        tokenizer = str(folder) if has_own else TOKENIZERS.get(model.language_model.config.d_model)
        if tokenizer is None:
            raise UserError(f"no tokenizer in {str(folder)!r}; pass tokenizer= (a FlanT5 tokenizer)")
    processor = clip_processor_settings(read_json(tower_name, "preprocessor_config.json"),
                                        model.vision_tower.config.image_size)
    verifier = CLIPT5Verifier(model, AutoTokenizer.from_pretrained(tokenizer), processor, name=str(name_or_path), **options)
    verifier.resize_mode = resize_mode
    return verifier.to(device)
