"""Tiny VQA models with random weights, built from configs without any download (tests and CPU smoke runs).

Each builder writes a folder in the published layout of its family so that the real loading path is exercised.
"""

from __future__ import annotations

import json
import os
import string
from pathlib import Path

import torch

from ..verifiers.vqa.preprocess import CLIP_MEAN, CLIP_STD

_CHARS = sorted(set(string.printable) - set(" \t\n\r\x0b\x0c"))


def write_t5_tokenizer(folder: str | os.PathLike) -> Path:
    """A character-level T5 (Unigram) tokenizer: ``<pad>``=0, ``</s>``=1, ``<unk>``=2, then ``▁`` and characters."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(c, -3.0) for c in _CHARS] + [("▁" + c, -2.5) for c in _CHARS]
    T5Tokenizer(vocab=vocab, extra_ids=0).save_pretrained(folder)
    return Path(folder)


def t5_vocab_size() -> int:
    return 4 + 2 * len(_CHARS)


def clip_processor_config(size: int, crop: int | None = None) -> dict:
    crop = size if crop is None else crop
    return {
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": size},
        "do_center_crop": True, "crop_size": {"height": crop, "width": crop}, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "resample": 3, "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD), "do_convert_rgb": True,
    }


def tiny_clip_vision_config(image_size: int = 16, patch_size: int = 8) -> dict:
    return dict(hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
                image_size=image_size, patch_size=patch_size)


def build_tiny_clip_vision(folder: str | os.PathLike, seed: int = 0, image_size: int = 16) -> Path:
    """A tiny ``CLIPVisionModel`` folder with a ``CLIPImageProcessor`` config (stands in for CLIP ViT-L/14-336)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    folder = Path(folder)
    torch.manual_seed(seed)
    CLIPVisionModel(CLIPVisionConfig(**tiny_clip_vision_config(image_size))).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(clip_processor_config(image_size)), encoding="utf-8")
    return folder


def tiny_t5_config() -> dict:
    return dict(vocab_size=t5_vocab_size(), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                num_heads=4, feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0,
                pad_token_id=0, eos_token_id=1, dropout_rate=0.0)


def build_tiny_clip_t5(folder: str | os.PathLike, seed: int = 0, tower_in_checkpoint: bool = True,
                       image_size: int = 16) -> Path:
    """A tiny CLIP-FlanT5 checkpoint folder in the original ``clip_t5`` layout (``pytorch_model.bin``, key names as the
    original class's ``state_dict``), with its tokenizer and, in ``folder/vision_tower``, the CLIP tower it names."""
    from transformers import CLIPVisionModel, T5Config, T5ForConditionalGeneration

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tower_dir = build_tiny_clip_vision(folder / "vision_tower", seed=seed, image_size=image_size)
    torch.manual_seed(seed + 1)
    t5 = T5ForConditionalGeneration(T5Config(**tiny_t5_config()))
    tower = CLIPVisionModel.from_pretrained(tower_dir)
    d_vision, d_model = tower.config.hidden_size, t5.config.d_model
    state = {k: v.clone() for k, v in t5.state_dict().items()}
    # FlanT5's output layer is its own (transformers 5 ties it at construction): independent small weights, so that
    # answer probabilities stay away from 0 and a loader that used the embeddings instead would score differently
    state["lm_head.weight"] = torch.randn_like(state["shared.weight"]) * 0.02
    state["embed_tokens.weight"] = state["shared.weight"].clone()  # the original class's alias of the embeddings
    projector = torch.nn.Sequential(torch.nn.Linear(d_vision, d_model), torch.nn.GELU(), torch.nn.Linear(d_model, d_model))
    state.update({f"mm_projector.{k}": v.clone() for k, v in projector.state_dict().items()})
    if tower_in_checkpoint:
        state.update({f"vision_tower.vision_tower.{k}": v.clone() for k, v in tower.state_dict().items()})
    torch.save(state, folder / "pytorch_model.bin")
    t5_fields = {k: v for k, v in t5.config.to_dict().items() if k != "scale_decoder_outputs"}
    config = {**t5_fields, "tie_word_embeddings": False,  # as FlanT5's config.json (transformers 5 writes True)
              "model_type": "clip_t5", "architectures": ["CLIPT5ForConditionalGeneration"],
              "mm_vision_tower": str(tower_dir), "mm_hidden_size": d_vision, "mm_projector_type": "mlp2x_gelu",
              "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch", "use_mm_proj": True}
    (folder / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    write_t5_tokenizer(folder)
    return folder


def write_byte_tokenizer(folder: str | os.PathLike, special_tokens: list[str], bos_token: str | None = None,
                         eos_token: str = "</s>", unk_token: str | None = None, pad_token: str | None = None) -> Path:
    """A byte-level BPE tokenizer with no merges (one token per byte) plus ``special_tokens`` (ids 256, 257, ...);
    ``bos_token`` (if any) is prepended to every encoding, as LLaMA's tokenizer does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from ..toy.tokenizer import bytes_to_unicode

    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(special_tokens)
    if bos_token is not None:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos_token} $A", special_tokens=[(bos_token, tokenizer.token_to_id(bos_token))]
        )
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=bos_token, eos_token=eos_token,
                                   unk_token=unk_token, pad_token=pad_token or eos_token)
    fast.save_pretrained(folder)
    return Path(folder)


def tiny_llama_config(vocab_size: int, **extra) -> dict:
    return dict(model_type="llama", vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256, **extra)


def _scale_output(model, factor: float = 10.0) -> None:
    """Scale the output layer so that the tiny model's next-token distribution is far from uniform (with the usual
    0.02 init it is nearly uniform, and a wrong prompt would change the score too little for a test to notice)."""
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(factor)


def build_tiny_llava(folder: str | os.PathLike, seed: int = 0, image_size: int = 16) -> Path:
    """A tiny ``LlavaForConditionalGeneration`` folder (llava-hf layout) with a byte tokenizer and CLIP processor config."""
    from transformers import AutoTokenizer, LlavaConfig, LlavaForConditionalGeneration

    folder = Path(folder)
    write_byte_tokenizer(folder, ["<s>", "</s>", "<unk>", "<image>"], bos_token="<s>", unk_token="<unk>")
    tok = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(seed)
    config = LlavaConfig(
        text_config=tiny_llama_config(len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id),
        vision_config=dict(model_type="clip_vision_model", **tiny_clip_vision_config(image_size)),
        image_token_index=tok.convert_tokens_to_ids("<image>"), projector_hidden_act="gelu",
        vision_feature_layer=-2, vision_feature_select_strategy="default",
    )
    model = LlavaForConditionalGeneration(config)
    _scale_output(model)
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(clip_processor_config(image_size)), encoding="utf-8")
    return folder


QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"]


def build_tiny_qwen2_5_vl(folder: str | os.PathLike, seed: int = 0, patch_size: int = 4) -> Path:
    """A tiny ``Qwen2_5_VLForConditionalGeneration`` folder with a byte tokenizer holding Qwen's special tokens and a
    ``Qwen2VLImageProcessor`` config (patch 4, merge 2, so 32x32 images need no resize)."""
    from transformers import AutoTokenizer, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    folder = Path(folder)
    write_byte_tokenizer(folder, QWEN_SPECIAL, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok = AutoTokenizer.from_pretrained(folder)
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
    torch.manual_seed(seed)
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=2, max_position_embeddings=512, bos_token_id=ids["<|endoftext|>"],
                eos_token_id=ids["<|im_end|>"],
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32, patch_size=patch_size,
                  spatial_merge_size=2, temporal_patch_size=2, window_size=4 * patch_size, fullatt_block_indexes=[1])
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                              vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
                              video_token_id=ids["<|endoftext|>"])
    model = Qwen2_5_VLForConditionalGeneration(config)
    _scale_output(model)
    model.save_pretrained(folder)
    processor = {"image_processor_type": "Qwen2VLImageProcessor", "patch_size": patch_size, "merge_size": 2,
                 "temporal_patch_size": 2, "min_pixels": 8 * 8, "max_pixels": 64 * 64, "image_mean": list(CLIP_MEAN),
                 "image_std": list(CLIP_STD), "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                 "do_resize": True, "resample": 3}
    (folder / "preprocessor_config.json").write_text(json.dumps(processor), encoding="utf-8")
    return folder


SMOLVLM_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<global-img>",
                   "<image>"]


def build_tiny_smolvlm(folder: str | os.PathLike, seed: int = 0, image_size: int = 16, idefics3: bool = False) -> Path:
    """A tiny ``SmolVLMForConditionalGeneration`` folder (Idefics3-style connector, scale factor 2, 4 image tokens);
    with ``idefics3=True`` the same as ``Idefics3ForConditionalGeneration`` (``model_type`` of SmolVLM-256M's config)."""
    from transformers import AutoTokenizer, Idefics3Config, Idefics3ForConditionalGeneration, SmolVLMConfig
    from transformers import SmolVLMForConditionalGeneration

    folder = Path(folder)
    write_byte_tokenizer(folder, SMOLVLM_SPECIAL, eos_token="<end_of_utterance>", pad_token="<|endoftext|>")
    tok = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(seed)
    config_cls, model_cls = (Idefics3Config, Idefics3ForConditionalGeneration) if idefics3 else (
        SmolVLMConfig, SmolVLMForConditionalGeneration)
    config = config_cls(
        text_config=tiny_llama_config(len(tok), pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=4),
        scale_factor=2, image_token_id=tok.convert_tokens_to_ids("<image>"),
    )
    model = model_cls(config)
    _scale_output(model)
    model.save_pretrained(folder)
    processor = {"image_processor_type": "SmolVLMImageProcessor", "do_resize": True,
                 "size": {"longest_edge": image_size}, "max_image_size": {"longest_edge": image_size},
                 "do_image_splitting": False, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                 "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_pad": True, "resample": 1}
    (folder / "preprocessor_config.json").write_text(json.dumps(processor), encoding="utf-8")
    return folder


def build_tiny_instructblip(folder: str | os.PathLike, seed: int = 0, image_size: int = 16) -> Path:
    """A tiny ``InstructBlipForConditionalGeneration`` (FlanT5 language model) folder: a T5 tokenizer with ``<image>``
    added, a byte tokenizer in ``qformer_tokenizer/``, and a ``BlipImageProcessor`` config."""
    from transformers import AutoTokenizer, InstructBlipConfig, InstructBlipForConditionalGeneration

    folder = Path(folder)
    write_t5_tokenizer(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tok.save_pretrained(folder)
    qtok = AutoTokenizer.from_pretrained(
        write_byte_tokenizer(folder / "qformer_tokenizer", ["[CLS]", "[SEP]", "[PAD]"], bos_token="[CLS]",
                             eos_token="[SEP]", pad_token="[PAD]"))
    torch.manual_seed(seed)
    t5 = {**tiny_t5_config(), "vocab_size": len(tok), "model_type": "t5"}
    config = InstructBlipConfig(
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=8),
        qformer_config=dict(vocab_size=len(qtok), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=32, encoder_hidden_size=16, max_position_embeddings=128,
                            pad_token_id=qtok.pad_token_id),
        text_config=t5, num_query_tokens=4, image_token_index=tok.convert_tokens_to_ids("<image>"),
    )
    model = InstructBlipForConditionalGeneration(config)
    _scale_output(model, 0.02)  # T5's output layer is initialised with std 1, not 0.02
    model.save_pretrained(folder)
    processor = {"image_processor_type": "BlipImageProcessor", "do_resize": True,
                 "size": {"height": image_size, "width": image_size}, "resample": 3, "do_rescale": True,
                 "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(CLIP_MEAN),
                 "image_std": list(CLIP_STD), "do_convert_rgb": True}
    (folder / "preprocessor_config.json").write_text(json.dumps(processor), encoding="utf-8")
    return folder


def build_tiny_original_llava(folder: str | os.PathLike, seed: int = 0, image_size: int = 16,
                              tower_in_checkpoint: bool = True) -> Path:
    """A tiny LLaVA-1.5 checkpoint in the original LLaVA code's layout (``model.mm_projector.*``,
    ``model.vision_tower.vision_tower.*``, LLaMA keys under ``model.``; no image token in the vocabulary), with a
    byte tokenizer and, in ``folder/vision_tower``, the CLIP tower that ``mm_vision_tower`` names."""
    from transformers import AutoTokenizer, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    write_byte_tokenizer(folder, ["<s>", "</s>", "<unk>"], bos_token="<s>", unk_token="<unk>")
    tok = AutoTokenizer.from_pretrained(folder)
    tower_dir = build_tiny_clip_vision(folder / "vision_tower", seed=seed, image_size=image_size)
    torch.manual_seed(seed + 1)
    llama_config = LlamaConfig(**{k: v for k, v in tiny_llama_config(len(tok)).items() if k != "model_type"},
                               bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    llama = LlamaForCausalLM(llama_config)
    _scale_output(llama)
    tower = CLIPVisionModel.from_pretrained(tower_dir)
    d_vision, d_model = tower.config.hidden_size, llama_config.hidden_size
    state = {k: v.clone() for k, v in llama.state_dict().items()}
    projector = torch.nn.Sequential(torch.nn.Linear(d_vision, d_model), torch.nn.GELU(), torch.nn.Linear(d_model, d_model))
    state.update({f"model.mm_projector.{k}": v.clone() for k, v in projector.state_dict().items()})
    if tower_in_checkpoint:
        state.update({f"model.vision_tower.vision_tower.{k}": v.clone() for k, v in tower.state_dict().items()})
    torch.save(state, folder / "pytorch_model.bin")
    config = {**llama_config.to_dict(), "model_type": "llava", "architectures": ["LlavaLlamaForCausalLM"],
              "mm_vision_tower": str(tower_dir), "mm_hidden_size": d_vision, "mm_projector_type": "mlp2x_gelu",
              "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch", "image_aspect_ratio": "pad"}
    (folder / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    return folder
