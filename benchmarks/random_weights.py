"""Models of published shapes with random weights, built locally with no download: SD1.4's UNet, VAE and CLIP-L
text encoder, a CLIP ViT-L/14 verifier, the VQA module's CLIP-FlanT5 verifier, and an untrained pipeline of the toy
world's shapes. Timing and memory do not depend on the weights' values."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a clean clone without installing
    sys.path.insert(0, str(ROOT))

from noise_diffusion.generators.stable_diffusion import StableDiffusionGenerator  # noqa: E402
from noise_diffusion.testing import write_clip_tokenizer  # noqa: E402
from noise_diffusion.verifiers.clip import CLIP_MEAN, CLIP_STD, CLIPVerifier  # noqa: E402

# -- published configurations (config.json of CompVis/stable-diffusion-v1-4 and openai/clip-vit-large-patch14) --------
SD14_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5, act_fn="silu",
    center_input_sample=False, downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, mid_block_scale_factor=1,
)
SD14_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
    act_fn="silu", sample_size=512,
)
CLIP_L_TEXT = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, bos_token_id=49406, eos_token_id=49407,
    pad_token_id=1,
)
CLIP_L_VISION = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=224,
    patch_size=14, hidden_act="quick_gelu", projection_dim=768,
)
SD14_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1,
)
# CLIP-FlanT5 (Lin et al., VQAScore): CLIP ViT-L/14-336 vision tower -> 2-layer GELU MLP projector -> FlanT5
# encoder-decoder. FlanT5 shapes from google/flan-t5-xl and google/flan-t5-xxl config.json.
CLIP_L336_VISION = {**CLIP_L_VISION, "image_size": 336}
FLAN_T5 = {
    "xl": dict(d_model=2048, d_ff=5120, d_kv=64, num_heads=32, num_layers=24, num_decoder_layers=24, vocab_size=32128,
               feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    "xxl": dict(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24, num_decoder_layers=24,
                vocab_size=32128, feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    "small": dict(d_model=512, d_ff=1024, d_kv=64, num_heads=6, num_layers=8, num_decoder_layers=8, vocab_size=32128,
                  feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}
SCORER_SHAPES = ("clip-l", "clip-flant5-small", "clip-flant5-xl", "clip-flant5-xxl")


def _workdir() -> Path:
    path = Path(tempfile.gettempdir()) / f"noise_diffusion_bench_{os.getuid()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def build_toy_shaped_pipeline(folder: Path, seed: int = 0) -> Path:
    """An untrained pipeline with the toy world's shapes: 32×32×3 images, a 3-level VAE (latents 4×8×8), DDIM."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from noise_diffusion.testing import tiny_clip_text_config

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(64, 128),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=64, attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(32, 64, 64), latent_channels=4, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3, norm_num_groups=32,
        sample_size=32,
    )
    text = CLIPTextModel(CLIPTextConfig(**tiny_clip_text_config(hidden=64, max_positions=16)))
    tok_dir = write_clip_tokenizer(folder / "_tok", model_max_length=16)
    scheduler = DDIMScheduler(**{k: v for k, v in SD14_SCHEDULER.items() if k != "skip_prk_steps"}, clip_sample=False)
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text, tokenizer=CLIPTokenizer.from_pretrained(tok_dir), scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    (folder / "noise_diffusion.json").write_text(json.dumps({"num_steps": 25, "guidance_scale": 5.0}))
    return folder


def materialize(build: Callable[[], torch.nn.Module], device, dtype, seed: int) -> torch.nn.Module:
    """Build a module on the meta device and give it random weights directly on ``device`` in ``dtype``: normal(0,
    0.02) weights, unit norm scales, zero biases. Timing and memory do not depend on the values, and this avoids
    minutes of CPU initialisation for billions of weights."""
    with torch.device("meta"):
        module = build()
    module = module.to(dtype).to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "norm" in name and name.endswith("weight"):
                param.fill_(1.0)
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.normal_(0.0, 0.02, generator=generator)
        for name, buffer in module.named_buffers():  # CLIP's position_ids
            if "position_ids" in name:
                buffer.copy_(torch.arange(buffer.shape[-1], device=device).expand_as(buffer))
    return module.requires_grad_(False).eval()


def build_sd14(device, dtype, cpu_offload: bool = False, vae_checkpointing: bool = False, vae_slicing: bool = False,
               compile: bool = False, **options) -> StableDiffusionGenerator:
    """SD1.4's UNet, VAE and CLIP-L text encoder with random weights (a character-level tokenizer stands in); the
    memory options are applied as the library's loader applies them (``generators.placement``)."""
    from noise_diffusion.generators import MemoryOptions, Sampling
    from noise_diffusion.generators.placement import place_pipeline

    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tok_dir = write_clip_tokenizer(_workdir() / "clip_char_tokenizer")
    where = "cpu" if cpu_offload else device  # offload wants the weights in CPU memory
    pipe = StableDiffusionPipeline(
        unet=materialize(lambda: UNet2DConditionModel(**SD14_UNET), where, dtype, 0),
        vae=materialize(lambda: AutoencoderKL(**SD14_VAE), where, dtype, 1),
        text_encoder=materialize(lambda: CLIPTextModel(CLIPTextConfig(**CLIP_L_TEXT)), where, dtype, 2),
        tokenizer=CLIPTokenizer.from_pretrained(tok_dir), scheduler=PNDMScheduler(**SD14_SCHEDULER),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    memory = MemoryOptions(cpu_offload=cpu_offload, vae_slicing=vae_slicing, vae_checkpointing=vae_checkpointing,
                           compile=compile)
    placed = place_pipeline(pipe, device, memory)
    return StableDiffusionGenerator(pipe, Sampling(**options), device=placed, memory=memory,
                                    name="sd14-architecture-random-weights")


def build_clip_l_verifier(device, dtype) -> CLIPVerifier:
    """CLIP ViT-L/14 (``clip-vit-large-patch14``) with random weights as a CLIPScore verifier."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    config = CLIPConfig(text_config=CLIP_L_TEXT, vision_config=CLIP_L_VISION, projection_dim=768)
    model = materialize(lambda: CLIPModel(config), device, dtype, 3)
    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(_workdir() / "clip_char_tokenizer"))
    verifier = CLIPVerifier(model, tokenizer, 224, 224, CLIP_MEAN, CLIP_STD, name="clip-l-architecture-random-weights",
                         mapping="affine")
    return verifier.to(device)


class _WordTokenizer:
    """Stands in for FlanT5's SentencePiece tokenizer with about its token counts (one id per word or punctuation
    mark, then ``</s>``), so that a random-weight CLIP-FlanT5 sees sequences of the real length."""

    def __init__(self, vocab_size: int = 32100) -> None:
        self.vocab_size = vocab_size

    def __len__(self) -> int:
        return self.vocab_size

    def __call__(self, text: str):
        import re
        import zlib

        words = re.findall(r"\w+|[^\w\s]", text)
        ids = [3 + zlib.crc32(w.encode()) % (self.vocab_size - 3) for w in words] + [1]
        return argparse.Namespace(input_ids=ids)


def build_clip_flant5_verifier(size: str, device, dtype, layers: int | None = None, **options):
    """The VQA module's CLIP-FlanT5 verifier (``CLIPT5Verifier``) with the published shapes and random weights: CLIP
    ViT-L/14-336 tower, mlp2x_gelu projector, FlanT5-``size``. Built on the meta device and materialised on ``device``
    (no slow CPU initialisation of billions of weights). ``layers`` keeps only that many layers in each of the vision
    tower, the T5 encoder and the T5 decoder (24 each in XL and XXL) — the real widths at a fraction of the depth, for
    measuring per-layer cost on a small machine (features still come from layer -2, as in the real model, so a cost
    linear in ``layers`` extrapolates to 24); ``options`` go to the verifier (``micro_batch``, ``checkpointing``)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, T5Config

    from noise_diffusion.verifiers.vqa.clip_t5 import CLIPT5, CLIPT5Verifier, ties_output_layer

    t5_shape, vision_shape = dict(FLAN_T5[size]), dict(CLIP_L336_VISION)
    if layers is not None:
        t5_shape.update(num_layers=layers, num_decoder_layers=layers)
        vision_shape.update(num_hidden_layers=layers)
    t5 = T5Config(**t5_shape, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, dropout_rate=0.0,
                  mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2, mm_vision_select_feature="patch")
    model = materialize(lambda: CLIPT5(t5, CLIPVisionModel(CLIPVisionConfig(**vision_shape))), device, dtype, 4)
    model.tie(ties_output_layer(t5_shape))  # FlanT5's head is its own
    processor = {"size": 336, "crop": 336, "mean": list(CLIP_MEAN), "std": list(CLIP_STD)}
    depth = "" if layers is None else f"-{layers}-layers"
    verifier = CLIPT5Verifier(model, _WordTokenizer(), processor, name=f"clip-flant5-{size}{depth}-shapes-random-weights",
                          **options)
    return verifier.to(device)
