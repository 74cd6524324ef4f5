"""Shared pieces of the benchmarks: model presets, timing with device synchronisation, memory readings.

Presets (``--preset``), all built locally with no download:

- ``tiny``: the test suite's tiny SD1.x pipeline (32×32 images, 4×16×16 latents) and tiny CLIP verifier.
- ``toy``: the project's trained toy world when it is installed (``noise_diffusion/toy/assets``), otherwise
  an untrained pipeline of the toy world's shapes (32×32×3 images, 4×8×8 latents, DDIM 25 steps, guidance 5) with the
  tiny CLIP verifier.
- ``sd14``: the real architectures of ``CompVis/stable-diffusion-v1-4`` (UNet, VAE, CLIP ViT-L/14 text encoder, PNDM
  scheduler config) and a CLIP ViT-L/14 verifier, with random weights, from their published configurations written
  below. Real-size cost without downloading anything; too slow to time many steps on a small CPU.

``--sd_version`` / ``--vqa_model`` replace a preset's generator / verifier with any model the library can load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import torch
from diffusers.utils import logging as diffusers_logging

diffusers_logging.set_verbosity_error()  # keep the benchmark output to the tables
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a clean clone without installing
    sys.path.insert(0, str(ROOT))

from noise_diffusion.cli import (  # noqa: E402
    add_generation_args, add_memory_args, add_verifier_args, generator_spec, positive_int, verifier_spec,
)
from noise_diffusion.specs import GeneratorSpec, VerifierSpec, resolve_device, resolve_dtype  # noqa: E402
from noise_diffusion.errors import UserError  # noqa: E402
from noise_diffusion.generators.stable_diffusion import StableDiffusionGenerator  # noqa: E402
from noise_diffusion.verifiers import load_verifier  # noqa: E402
from noise_diffusion.verifiers.clip import CLIP_MEAN, CLIP_STD, CLIPVerifier  # noqa: E402
from noise_diffusion.testing import build_tiny_clip, build_tiny_sd_pipeline, write_clip_tokenizer  # noqa: E402

PRESETS = ("tiny", "toy", "sd14")
#: the benchmarks' prompts for open-vocabulary verifiers
BENCHMARK_PROMPTS = ("a dog and a frog", "a red cube on top of a blue sphere", "a cat left of a clock",
                     "two birds and a bench")
#: prompts of the toy world's grammar: its verifier scores only these
TOY_PROMPTS = ["a 3 left of a 7", "a 1 above a 4", "a 2 and a 9", "a 5 right of a 8", "a 6 below a 0"]

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


# -- presets -----------------------------------------------------------------------------------------------------------
def _workdir() -> Path:
    path = Path(tempfile.gettempdir()) / f"noise_diffusion_bench_{os.getuid()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _cached(name: str, build: Callable[[Path], Path]) -> str:
    """Build a model folder once per machine (random weights from a fixed seed, so a rebuild is identical)."""
    folder = _workdir() / name
    marker = folder / ".complete"
    if not marker.exists():
        build(folder)
        marker.write_text("ok")
    return str(folder)


def tiny_sd_dir() -> str:
    return _cached("tiny_sd", build_tiny_sd_pipeline)


def tiny_clip_dir() -> str:
    return _cached("tiny_clip", build_tiny_clip)


def toy_world_dir() -> str | None:
    """The trained toy world's pipeline folder if the project ships it, else None."""
    assets = ROOT / "noise_diffusion" / "toy" / "assets"
    if not assets.is_dir():
        return None
    for index in sorted(assets.rglob("model_index.json")):
        return str(index.parent)
    return None


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

    from noise_diffusion.verifiers.vqa.clip_t5 import CLIPT5, CLIPT5Verifier

    t5_shape, vision_shape = dict(FLAN_T5[size]), dict(CLIP_L336_VISION)
    if layers is not None:
        t5_shape.update(num_layers=layers, num_decoder_layers=layers)
        vision_shape.update(num_hidden_layers=layers)
    t5 = T5Config(**t5_shape, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, dropout_rate=0.0,
                  mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2, mm_vision_select_feature="patch")
    model = materialize(lambda: CLIPT5(t5, CLIPVisionModel(CLIPVisionConfig(**vision_shape))), device, dtype, 4)
    model.tie()
    processor = {"size": 336, "crop": 336, "mean": list(CLIP_MEAN), "std": list(CLIP_STD)}
    depth = "" if layers is None else f"-{layers}-layers"
    verifier = CLIPT5Verifier(model, _WordTokenizer(), processor, name=f"clip-flant5-{size}{depth}-shapes-random-weights",
                          **options)
    return verifier.to(device)


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The package's own model flags (those of ``run.py``: diffusion model, memory options, verifier), the presets
    that stand in for ``--sd_version`` / ``--vqa_model`` when those are not given, and the timing flags."""
    add_generation_args(parser)
    add_memory_args(parser)
    add_verifier_args(parser)
    parser.set_defaults(sd_version=None, vqa_model=None)  # the preset's, unless given
    g = parser.add_argument_group("benchmark presets and timing")
    g.add_argument("--preset", choices=PRESETS, default="tiny",
                   help="models built locally (see benchmarks/common.py), replaced by --sd_version / --vqa_model when "
                        "given (default: %(default)s)")
    g.add_argument("--verifier_shape", choices=SCORER_SHAPES, default=None,
                   help="a random-weight verifier of published shapes instead of the preset's (sd14's is clip-l)")
    g.add_argument("--num_steps", dest="num_denoising_steps", type=positive_int, default=None,
                   help="the same as --num_denoising_steps")
    g.add_argument("--clock", choices=("auto", "wall", "cpu"), default="auto",
                   help="auto: the process's CPU time on a CPU device (robust on a shared machine), wall time on a GPU")
    g.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")


def build_models(args: argparse.Namespace):
    """(generator, verifier, description) from the parsed ``add_model_args`` flags, through the package's specs."""
    if args.threads:
        torch.set_num_threads(args.threads)
    generator, generator_name = _build_generator(args, generator_spec(args))
    verifier, verifier_name = _build_verifier(args, verifier_spec(args))
    return generator, verifier, f"{generator_name} + {verifier_name}"


def _build_generator(args: argparse.Namespace, spec: GeneratorSpec):
    if spec.model:
        return spec.build(), spec.model
    if args.preset == "sd14":
        device = resolve_device(spec.device)
        sampling = {k: v for k, v in spec.loader_options().items() if k in ("scheduler", "num_steps", "height", "width")
                    and v is not None}
        memory = {k: getattr(spec, k) for k in ("cpu_offload", "vae_checkpointing", "vae_slicing", "compile")}
        return (build_sd14(device, resolve_dtype(spec.dtype, device), **sampling, **memory),
                "SD1.4 architecture (random weights)")
    if args.preset == "tiny":
        return replace(spec, model=tiny_sd_dir()).build(), "tiny SD1.x (random weights)"
    trained = toy_world_dir()
    folder = trained or _cached("toy_shaped_sd", build_toy_shaped_pipeline)
    return replace(spec, model=folder).build(), "toy world (trained)" if trained else "toy-world shapes (untrained)"


def _build_verifier(args: argparse.Namespace, spec: VerifierSpec):
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device, gpu_default="bfloat16")
    vqa_options = {k: v for k, v in spec.options().items() if k in ("micro_batch", "checkpointing")}
    if spec.model:
        verifier, name = spec.build(), spec.model
    elif args.verifier_shape and args.verifier_shape != "clip-l":
        size = args.verifier_shape.removeprefix("clip-flant5-")
        verifier = build_clip_flant5_verifier(size, device, dtype, **vqa_options)
        name = f"CLIP-FlanT5-{size.upper()} shapes (random weights)"
    elif args.preset == "sd14" or args.verifier_shape == "clip-l":
        verifier, name = build_clip_l_verifier(device, dtype), "CLIP ViT-L/14 (random weights)"
    elif args.preset == "toy" and toy_world_dir():
        verifier = load_verifier("toy-digits-cnn", device, dtype)
        name = f"toy verifier {verifier.name}"
    else:
        verifier, name = load_verifier(tiny_clip_dir(), device, dtype, mapping="affine"), "tiny CLIP (random weights)"
    if vqa_options and not hasattr(verifier, "set_checkpointing"):
        raise UserError(f"--vqa_checkpointing / --vqa_micro_batch need a VQA verifier, not {name}")
    return verifier, name


def prompts_for(verifier, prompts: Sequence[str] = BENCHMARK_PROMPTS) -> list[str]:
    """``prompts``, or the toy world's when the verifier scores only its grammar (it refuses one of them)."""
    try:
        for prompt in prompts:
            verifier.check_prompt(prompt)
    except UserError:
        return list(TOY_PROMPTS)
    return list(prompts)


# -- timing and memory -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Clock:
    """``wall`` (time.perf_counter) or ``cpu`` (time.process_time: this process's CPU seconds, all threads)."""

    kind: str = "wall"

    @property
    def name(self) -> str:
        return {"cpu": "process CPU time", "wall": "wall time"}[self.kind]

    def now(self) -> float:
        return time.process_time() if self.kind == "cpu" else time.perf_counter()


WALL = Clock("wall")


def clock_for(choice: str, device) -> Clock:
    """The clock ``--clock`` names; ``auto`` picks ``cpu`` for a CPU device: on a machine shared with other jobs, wall
    time mostly measures how long the process waited for a core, while its CPU time is the work it did. A GPU is timed
    by the wall clock."""
    if choice == "auto":
        choice = "cpu" if torch.device(device).type == "cpu" else "wall"
    return Clock(choice)


def synchronize(device: torch.device | str) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device, repeats: int = 3, warmup: int = 1,
          clock: Clock = WALL) -> tuple[float, object]:
    """Median time of ``fn()`` by ``clock`` over ``repeats`` runs (after ``warmup`` runs), synchronising the device
    around each run so that queued GPU work is counted; returns (seconds, last result)."""
    result = None
    for _ in range(warmup):
        result = fn()
        synchronize(device)
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = clock.now()
        result = fn()
        synchronize(device)
        times.append(clock.now() - start)
    return statistics.median(times), result


def reset_peak_memory(device) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device) -> tuple[float, str]:
    """(GiB, what it is): CUDA's max allocated since the last reset, or the process's peak RSS on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "torch.cuda.max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "process peak RSS"


def machine() -> str:
    """The machine a benchmark measures, read now: the GPU when there is one, the CPU model, its cores, torch and its
    threads."""
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), model)
    except OSError:
        pass
    gpu = f"{torch.cuda.get_device_name(0)}; " if torch.cuda.is_available() else ""
    return f"{gpu}{model}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} thread(s)"


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def write_json(path: str, data: dict) -> None:
    from noise_diffusion.results import write_json_atomic

    write_json_atomic(Path(path), data)


def publish(report: dict, text: str, json_path: str | None) -> int:
    """Print a benchmark's markdown and write its JSON report when asked; the exit status of a finished benchmark."""
    print(text)
    if json_path:
        write_json(json_path, report)
    return 0


def publish_batches(report: dict, batches: Sequence[int], measure: Callable[[int], dict],
                    epoch: Callable[[dict], str], markdown: Callable[[dict], str], json_path: str | None) -> int:
    """Measure every batch size into ``report["results"]`` (a progress line each, ``epoch`` of its row), then
    :func:`publish`."""
    for batch in batches:
        report["results"].append(measure(batch))
        print(f"batch {batch}: epoch {epoch(report['results'][-1])}", flush=True)
    return publish(report, markdown(report), json_path)


def user_error_exit(main: Callable[[], int | None]) -> None:
    from noise_diffusion.cli import main_guard

    main_guard(main)


__all__ = ["UserError"]
