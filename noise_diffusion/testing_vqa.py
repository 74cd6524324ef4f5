"""Tiny VQA models with random weights, built from configs without any download (tests and CPU smoke runs).

Each builder writes a folder in the published layout of its family so that the real loading path is exercised.
"""

from __future__ import annotations

import json
import os
import string
from pathlib import Path

import torch

from .scorers.vqa.preprocess import CLIP_MEAN, CLIP_STD

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
    with torch.no_grad():  # small output weights: answer probabilities away from 0, as a trained model's would be
        t5.lm_head.weight.mul_(0.02)
    tower = CLIPVisionModel.from_pretrained(tower_dir)
    d_vision, d_model = tower.config.hidden_size, t5.config.d_model
    state = {k: v.clone() for k, v in t5.state_dict().items()}
    state["embed_tokens.weight"] = state["shared.weight"].clone()  # the original class's alias of the embeddings
    projector = torch.nn.Sequential(torch.nn.Linear(d_vision, d_model), torch.nn.GELU(), torch.nn.Linear(d_model, d_model))
    state.update({f"mm_projector.{k}": v.clone() for k, v in projector.state_dict().items()})
    if tower_in_checkpoint:
        state.update({f"vision_tower.vision_tower.{k}": v.clone() for k, v in tower.state_dict().items()})
    torch.save(state, folder / "pytorch_model.bin")
    config = {**t5.config.to_dict(), "model_type": "clip_t5", "architectures": ["CLIPT5ForConditionalGeneration"],
              "mm_vision_tower": str(tower_dir), "mm_hidden_size": d_vision, "mm_projector_type": "mlp2x_gelu",
              "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch", "use_mm_proj": True}
    (folder / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    write_t5_tokenizer(folder)
    return folder
