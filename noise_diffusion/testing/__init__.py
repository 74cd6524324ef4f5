"""Tiny models with random weights, built from configs without any download: for tests, smoke runs and benchmarks.

Every builder writes a folder in the published layout (a diffusers pipeline folder with ``model_index.json``, or a
transformers model folder with ``config.json``) so that the real ``from_pretrained`` loading path is exercised.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..toy.tokenizer import bytes_to_unicode, write_clip_tokenizer  # noqa: F401 (re-exported)


def clip_vocab_size() -> int:
    return 2 * 256 + 2


def tiny_clip_text_config(hidden: int = 32, max_positions: int = 77, projection_dim: int | None = None) -> dict:
    config = dict(
        vocab_size=clip_vocab_size(), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=max_positions, bos_token_id=512, eos_token_id=513,
        pad_token_id=513,
    )
    if projection_dim is not None:
        config["projection_dim"] = projection_dim
    return config


def build_tiny_sd_pipeline(folder: str | os.PathLike, seed: int = 0, sample_size: int = 16, scheduler: str = "pndm") -> Path:
    """A tiny ``StableDiffusionPipeline`` (UNet with (32, 64) blocks, a 2-level VAE, a 2-layer CLIP text encoder).

    ``scheduler`` is the checkpoint's own: ``"pndm"`` as SD1.4 ships (``skip_prk_steps``, SD1.x betas) or ``"ddim"``.
    Images are ``2 * sample_size`` pixels square.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(32, 64), latent_channels=4, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=32,
        sample_size=2 * sample_size,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(**tiny_clip_text_config()))
    tokenizer_dir = write_clip_tokenizer(folder / "_tokenizer_src")
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    sd_betas = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    if scheduler == "pndm":
        sched = PNDMScheduler(**sd_betas, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    else:
        sched = DDIMScheduler(**sd_betas, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=sched,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    _remove_tree(tokenizer_dir)
    return folder


def build_tiny_clip(folder: str | os.PathLike, seed: int = 0, image_size: int = 32) -> Path:
    """A tiny ``CLIPModel`` folder with its tokenizer and image-processor config."""
    from transformers import CLIPConfig, CLIPModel

    folder = Path(folder)
    torch.manual_seed(seed)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=image_size, patch_size=8)
    config = CLIPConfig(text_config=tiny_clip_text_config(), vision_config=vision, projection_dim=16)
    CLIPModel(config).save_pretrained(folder)
    write_clip_tokenizer(folder)
    processor = {
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": image_size},
        "do_center_crop": True, "crop_size": {"height": image_size, "width": image_size}, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "resample": 3,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_convert_rgb": True,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(processor), encoding="utf-8")
    return folder


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
