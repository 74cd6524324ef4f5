"""Tiny SD3, SDXL and FLUX pipelines with random weights, built from configs without any download.

Each builder writes a diffusers pipeline folder in the published layout (``model_index.json`` naming the pipeline
class, one sub-folder per component) so that tests exercise the real ``from_pretrained`` path and the generator is
chosen from the folder's own ``model_index.json``. A ``noise_diffusion.json`` with tiny sampling settings (size, steps)
is written next to it, as a user would for a checkpoint whose recommended settings differ from the family's.

Dimension rules these configs satisfy (the real checkpoints obey the same ones):

- SD3: ``joint_attention_dim`` = T5 width, which must be >= the two CLIP widths together (the CLIP hidden states are
  concatenated and zero-padded to the T5 width); ``pooled_projection_dim`` = the two CLIP projections together.
- SDXL: ``cross_attention_dim`` = the two CLIP widths together; ``projection_class_embeddings_input_dim`` =
  6 x ``addition_time_embed_dim`` (original size, crop corner, target size) + text encoder 2's projection.
- FLUX: ``in_channels`` = 4 x VAE latent channels (2x2 packing); ``joint_attention_dim`` = T5 width;
  ``pooled_projection_dim`` = CLIP width (the pooled CLIP output has no projection); ``sum(axes_dims_rope)`` =
  ``attention_head_dim``.
"""

from __future__ import annotations

import json
import os
import shutil
import string
from pathlib import Path

import torch

from . import tiny_clip_text_config, write_clip_tokenizer

#: published VAE latent normalisation of the real families (scaling, shift), reused so decode is tested with a shift
SD3_VAE_FACTORS = (1.5305, 0.0609)
FLUX_VAE_FACTORS = (0.3611, 0.1159)
SDXL_VAE_SCALING = 0.13025

#: the published scheduler configs of stabilityai/sd-turbo (Euler) and stabilityai/sdxl-turbo (Euler ancestral),
#: key for key as their scheduler/scheduler_config.json (keys another class left there included)
_TURBO_COMMON = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    prediction_type="epsilon", timestep_spacing="trailing", steps_offset=1, interpolation_type="linear",
    clip_sample=False, set_alpha_to_one=False, skip_prk_steps=True, sample_max_value=1.0, trained_betas=None,
)
TURBO_SCHEDULERS = {
    "sd-turbo": {"_class_name": "EulerDiscreteScheduler", **_TURBO_COMMON, "use_karras_sigmas": False,
                 "timestep_type": "discrete", "sigma_min": None, "sigma_max": None},
    "sdxl-turbo": {"_class_name": "EulerAncestralDiscreteScheduler", **_TURBO_COMMON},
}

#: tiny images are 32x32 pixels (the tiny CLIP verifier's input size); latents 16x16
TINY_SIZE = 32


def build_t5_tokenizer(folder: str | os.PathLike | None = None):
    """A character-level T5 tokenizer (Unigram over single characters, SentencePiece's ``▁`` word mark).

    Built from a vocabulary in memory, so no SentencePiece model or download is needed; saved as ``tokenizer.json``
    when ``folder`` is given. Ids: 0 ``<pad>``, 1 ``</s>``, 2 ``<unk>`` as in T5.
    """
    from transformers import T5Tokenizer

    chars = string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(c, -3.0) for c in chars] + [("\u2581" + c, -3.5) for c in chars]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
    if folder is not None:
        tokenizer.save_pretrained(folder)
    return tokenizer


def tiny_t5_encoder(vocab_size: int, d_model: int, seed: int):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=32, decoder_start_token_id=0,
        pad_token_id=0, eos_token_id=1,
    )
    return T5EncoderModel(config)


def _clip_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(write_clip_tokenizer(folder / "_clip_tokenizer_src"))


def _vae(latent_channels: int, scaling: float, shift: float | None, seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(32, 32), latent_channels=latent_channels,
        layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=32, sample_size=TINY_SIZE, scaling_factor=scaling, shift_factor=shift,
    )


def _finish(pipe, folder: Path, sampling: dict) -> Path:
    pipe.save_pretrained(folder)
    (folder / "noise_diffusion.json").write_text(json.dumps(sampling), encoding="utf-8")
    shutil.rmtree(folder / "_clip_tokenizer_src", ignore_errors=True)
    return folder


def build_tiny_sd3_pipeline(folder: str | os.PathLike, seed: int = 0, num_steps: int = 4) -> Path:
    """A tiny ``StableDiffusion3Pipeline``: SD3 transformer, two CLIP encoders with projection, a tiny T5."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    folder = Path(folder)
    clip_width, projection, t5_width = 32, 16, 64
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=TINY_SIZE // 2, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=t5_width,
        pooled_projection_dim=2 * projection, pos_embed_max_size=16,
    )
    clip_config = CLIPTextConfig(**tiny_clip_text_config(clip_width, projection_dim=projection))
    torch.manual_seed(seed + 1)
    text_encoder = CLIPTextModelWithProjection(clip_config)
    torch.manual_seed(seed + 2)
    text_encoder_2 = CLIPTextModelWithProjection(clip_config)
    tokenizer_3 = build_t5_tokenizer()
    text_encoder_3 = tiny_t5_encoder(len(tokenizer_3), t5_width, seed + 3)
    tokenizer = _clip_tokenizer(folder)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(4, *SD3_VAE_FACTORS, seed + 4), text_encoder=text_encoder, tokenizer=tokenizer,
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer, text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3,
    )
    sampling = {"height": TINY_SIZE, "width": TINY_SIZE, "num_steps": num_steps, "max_sequence_length": 32}
    return _finish(pipe, folder, sampling)


def build_tiny_sdxl_pipeline(folder: str | os.PathLike, seed: int = 0, num_steps: int = 4) -> Path:
    """A tiny ``StableDiffusionXLPipeline``: text-time conditioned UNet, CLIP + CLIP-with-projection, Euler."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    folder = Path(folder)
    width_1, width_2, projection, time_dim = 32, 32, 16, 8
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=TINY_SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=width_1 + width_2, attention_head_dim=(2, 4), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + projection, norm_num_groups=32,
    )
    torch.manual_seed(seed + 1)
    text_encoder = CLIPTextModel(CLIPTextConfig(**tiny_clip_text_config(width_1)))
    torch.manual_seed(seed + 2)
    config_2 = CLIPTextConfig(**tiny_clip_text_config(width_2, projection_dim=projection))
    text_encoder_2 = CLIPTextModelWithProjection(config_2)
    tokenizer = _clip_tokenizer(folder)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        steps_offset=1, timestep_spacing="leading",
    )
    pipe = StableDiffusionXLPipeline(
        vae=_vae(4, SDXL_VAE_SCALING, None, seed + 3), text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler, add_watermarker=False,
    )
    return _finish(pipe, folder, {"height": TINY_SIZE, "width": TINY_SIZE, "num_steps": num_steps})


def build_tiny_flux_pipeline(
    folder: str | os.PathLike, seed: int = 0, variant: str = "dev", num_steps: int = 4
) -> Path:
    """A tiny ``FluxPipeline``. ``variant="dev"``: guidance-distilled transformer and resolution-dependent shift
    (as FLUX.1-dev ships); ``"schnell"``: no guidance embedding, no shift (as FLUX.1-schnell)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if variant not in ("dev", "schnell"):
        raise ValueError(f"variant must be dev or schnell, got {variant!r}")
    folder = Path(folder)
    clip_width, t5_width, latent_channels = 32, 32, 4
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * latent_channels, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=t5_width, pooled_projection_dim=clip_width,
        guidance_embeds=variant == "dev", axes_dims_rope=(4, 6, 6),
    )
    torch.manual_seed(seed + 1)
    text_encoder = CLIPTextModel(CLIPTextConfig(**tiny_clip_text_config(clip_width)))
    tokenizer_2 = build_t5_tokenizer()
    text_encoder_2 = tiny_t5_encoder(len(tokenizer_2), t5_width, seed + 2)
    if variant == "dev":
        scheduler = FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
            max_image_seq_len=4096,
        )
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    pipe = FluxPipeline(
        scheduler=scheduler, vae=_vae(latent_channels, *FLUX_VAE_FACTORS, seed + 3), text_encoder=text_encoder,
        tokenizer=_clip_tokenizer(folder), text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    sampling = {"height": TINY_SIZE, "width": TINY_SIZE, "num_steps": num_steps, "max_sequence_length": 32}
    return _finish(pipe, folder, sampling)


def build_tiny_turbo_pipeline(folder: str | os.PathLike, kind: str = "sd-turbo", seed: int = 0) -> Path:
    """A tiny SD (``"sd-turbo"``) or SDXL (``"sdxl-turbo"``) pipeline whose scheduler config is the turbo checkpoint's
    own (:data:`TURBO_SCHEDULERS`); its ``noise_diffusion.json`` sets only the tiny image size."""
    from . import build_tiny_sd_pipeline

    if kind not in TURBO_SCHEDULERS:
        raise ValueError(f"kind must be one of {', '.join(TURBO_SCHEDULERS)}, got {kind!r}")
    folder = Path(folder)
    if kind == "sd-turbo":
        build_tiny_sd_pipeline(folder, seed=seed)
    else:
        build_tiny_sdxl_pipeline(folder, seed=seed)
    config = TURBO_SCHEDULERS[kind]
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(config), encoding="utf-8")
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    index["scheduler"] = ["diffusers", config["_class_name"]]
    (folder / "model_index.json").write_text(json.dumps(index), encoding="utf-8")
    (folder / "noise_diffusion.json").write_text(json.dumps({"height": TINY_SIZE, "width": TINY_SIZE}), encoding="utf-8")
    return folder
