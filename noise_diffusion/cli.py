"""The flags that ``run.py`` and ``evaluate.py`` share, and the specs and search settings built from them (the
argument types and the one-line-error guard are in :mod:`noise_diffusion.arguments`)."""

from __future__ import annotations

import argparse

from .arguments import (  # noqa: F401 (re-exported: the argument types of every command line)
    ArgumentParser, finite_float, main_guard, non_negative_int, positive_float, positive_int, seed_int, unit_float,
)
from .errors import UserError
from .generators import GENERATORS
from .methods import METHODS
from .noise_search import ZERO_ORDER_COSINE, ZERO_ORDER_NEIGHBOURS
from .search_config import GRADIENTS
from .optimize import ACCEPT_RULES, SearchConfig
from .specs import GeneratorSpec, VerifierSpec

DTYPE_CHOICES = ("auto", "float32", "float16", "bfloat16")


def family_defaults(field: str) -> str:
    """Each model family's recommended value of a :class:`~noise_diffusion.generators.Sampling` field, read from the
    families themselves: e.g. ``"SD1.x/2.x, SDXL: 50; SD3/SD3.5, FLUX.1-dev: 28; FLUX.1-schnell: 4"``."""
    groups: dict[str, list[str]] = {}
    for family in dict.fromkeys(GENERATORS.values()):
        for label, sampling in family.recommended().items():
            value = getattr(sampling, field)
            text = "the checkpoint's native size" if value is None else (value if isinstance(value, str) else f"{value:g}")
            if field in ("height", "width") and family.SIZE_NOTE and label == family.LABEL:
                text += f" ({family.SIZE_NOTE})"
            groups.setdefault(text, []).append(label)
    return "; ".join(f"{', '.join(labels)}: {text}" for text, labels in groups.items())


def add_generation_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("diffusion model")
    g.add_argument("--sd_version", default="CompVis/stable-diffusion-v1-4",
                   help="diffusion checkpoint: Hub id, local diffusers folder or short name (default: %(default)s)")
    recommended = "the family's recommended setting, unless the model folder's noise_diffusion.json sets its own"
    g.add_argument("--num_denoising_steps", type=positive_int, default=None,
                   help=f"sampler steps per generation (default: {recommended}: {family_defaults('num_steps')})")
    g.add_argument("--scheduler", choices=("ddim", "default"), default=None,
                   help="'ddim' (eta=0, the paper's experiments) or 'default' (the checkpoint's own, e.g. PNDM for "
                        "SD1.4, as the authors' release script; the Euler of sd-turbo and sdxl-turbo, which their "
                        "model cards use); SD3 and FLUX have one sampler, flow-matching Euler, for both "
                        f"(default: the family's recommended: {family_defaults('scheduler')})")
    g.add_argument("--guidance_scale", type=finite_float, default=None,
                   help=f"guidance scale, classifier-free or (FLUX.1-dev) distilled (default: {recommended}: "
                        f"{family_defaults('guidance_scale')})")
    g.add_argument("--negative_prompt", default="", help="negative prompt (default: empty)")
    for side in ("height", "width"):
        g.add_argument(f"--{side}", type=positive_int, default=None,
                       help=f"image {side} in pixels (default: {recommended}: {family_defaults(side)})")
    g.add_argument("--device", default=None,
                   help="device of the diffusion model (default: cuda:0 when a GPU is present, else cpu)")
    g.add_argument("--dtype", choices=DTYPE_CHOICES, default="float32",
                   help="precision of the diffusion model; auto = the family's half precision on a GPU (float16 for "
                        "SD1.x/2.x/SDXL, bfloat16 for SD3/FLUX), float32 on the CPU "
                        "(default: %(default)s, as the authors)")


def add_memory_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("memory and speed (diffusion model)")
    g.add_argument("--cpu_offload", action="store_true",
                   help="diffusers' model CPU offload: modules wait in CPU memory and visit the GPU while they run")
    g.add_argument("--vae_slicing", action="store_true", help="decode a batch one image at a time")
    g.add_argument("--vae_tiling", action="store_true", help="decode large images tile by tile")
    g.add_argument("--vae_checkpointing", action="store_true",
                   help="gradient checkpointing in the VAE decoder: exact, about half the decode's backward memory")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the denoiser (UNet or transformer, every family; pays off on long GPU runs)")
    g.add_argument("--t5_device", default=None, help="SD3/FLUX: run the T5 text encoder on this device (e.g. cpu)")
    g.add_argument("--drop_t5", action="store_true", help="SD3: load no T5 encoder (less memory, less faithful)")


def generator_spec(args: argparse.Namespace) -> GeneratorSpec:
    """The diffusion model that the flags describe."""
    return GeneratorSpec(
        model=args.sd_version, device=args.device, dtype=args.dtype, scheduler=args.scheduler,
        num_steps=args.num_denoising_steps, guidance_scale=args.guidance_scale, negative_prompt=args.negative_prompt,
        height=args.height, width=args.width, cpu_offload=args.cpu_offload, vae_slicing=args.vae_slicing,
        vae_tiling=args.vae_tiling, vae_checkpointing=args.vae_checkpointing, compile=args.compile,
        t5_device=args.t5_device, drop_t5=args.drop_t5,
    )

def add_verifier_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("verifier")
    g.add_argument("--vqa_model", default="clip-flant5-xxl",
                   help="verifier that guides the search: a registered name, or a Hub id / local folder of a supported "
                        "architecture (CLIP, ...) (default: %(default)s)")
    g.add_argument("--vqa_device", default=None, help="device of the verifier (default: same as --device)")
    g.add_argument("--vqa_question", default=None,
                   help='VQA question template, {prompt} stands for the prompt (default: \'Does this figure show '
                        '"{prompt}"? Please answer yes or no.\')')
    g.add_argument("--vqa_answer", default=None, help="answer whose probability is the score (default: 'Yes')")
    g.add_argument("--vqa_resize", choices=("antialias", "authors"), default=None,
                   help="how a VQA verifier resizes images to its input size: 'antialias' (default) as the image "
                        "processors' PIL resize, so the score is the image's true VQAScore; 'authors' = bicubic "
                        "without antialiasing, as the paper authors' in-loop torchvision 0.16 Resize(336) "
                        "(reproduces their in-loop scores and gradients; no effect when no resize is needed)")
    g.add_argument("--vqa_dtype", choices=DTYPE_CHOICES, default="auto",
                   help="precision of the verifier; auto = bfloat16 on a GPU (as the original), float32 on the CPU "
                        "(default: %(default)s)")
    g.add_argument("--vqa_micro_batch", type=positive_int, default=None,
                   help="VQA verifiers: score at most this many images at a time, each micro-batch's backward run "
                        "before the next, so the verifier's activations are held for one micro-batch only (same scores "
                        "and gradients; independent of --batch_size) (default: the whole batch at once)")
    g.add_argument("--vqa_checkpointing", action="store_true",
                   help="VQA verifiers: activation checkpointing in every layer of the vision tower and the language "
                        "model: less backward memory for about one more verifier forward pass (same results)")


def add_search_args(parser: argparse.ArgumentParser, with_method: bool = True) -> None:
    g = parser.add_argument_group("search")
    if with_method:
        g.add_argument("--method", choices=tuple(METHODS), default="noise_diffusion",
                       help="search method: " + "; ".join(f"{m.name}: {m.description}" for m in METHODS.values())
                            + " (default: %(default)s)")
    g.add_argument("--num_candidate_noises", type=positive_int, default=None,
                   help="N: the candidate noises drawn per epoch (noise_diffusion), or the neighbours generated and "
                        "scored per epoch (zero_order: an epoch then costs N generations, so --max_epoch E there "
                        "spends what --max_epoch E*N spends for a method with one generation per epoch) "
                        f"(default: {ZERO_ORDER_NEIGHBOURS} for zero_order, as tt-scale-flux; 50 otherwise)")
    g.add_argument("--max_epoch", type=non_negative_int, default=50,
                   help="epochs after the initial generation (reno: ReNO's iterations are max_epoch + 1, the last "
                        "without a backward) (default: %(default)s)")
    g.add_argument("--accept", choices=ACCEPT_RULES, default="always",
                   help="'always' accept the update (as the authors) or only when the score rises ('improved'); "
                        "zero_order always uses 'improved', reno and mean_variance 'always' (default: %(default)s)")
    g.add_argument("--gradient", choices=GRADIENTS, default=None,
                   help="gradient of the score w.r.t. the initial noise, for the methods that use one "
                        "(noise_diffusion, gradient_ascent, reno, mean_variance): 'replay' = the paper's, the "
                        "denoiser's predictions held fixed (no denoiser backward); 'exact' = back-propagated through "
                        "the VAE decode and every denoiser call (guidance included, one step's activations "
                        "checkpointed at a time), and every epoch then records the cosine and norm ratio of the exact "
                        "and the replay gradient (default: exact for reno, as ReNO; replay for the others)")
    g.add_argument("--neighbour_cosine", type=finite_float, default=ZERO_ORDER_COSINE,
                   help="zero_order only: every neighbour keeps the pivot's norm and has this cosine with it, an "
                        "angle arccos(c) away (default: %(default)s, tt-scale-flux's threshold)")
    g.add_argument("--target_score", type=unit_float, default=None,
                   help="stop early once the best score reaches this value (default: off, run all epochs)")
    g.add_argument("--step_size", type=positive_float, default=0.1,
                   help="gradient_ascent only: step length relative to sqrt(dim z) (default: %(default)s)")


#: the seeds of the authors' research code, ``--seeds paper``
PAPER_SEEDS = (22, 15, 9951, 31, 9989)


def seed_or_paper(text: str) -> int | str:
    """An argparse type: a seed (0 .. 2**64-1) or the word ``paper``."""
    return text if text == "paper" else seed_int(text)


def seed_list(values: list[int | str]) -> list[int]:
    """Seeds from the command line: integers, or ``paper`` for :data:`PAPER_SEEDS`; duplicates dropped."""
    seeds: list[int] = []
    for value in values:
        if value == "paper":
            seeds.extend(PAPER_SEEDS)
            continue
        try:
            seeds.append(seed_int(str(value)))
        except argparse.ArgumentTypeError:
            raise UserError(f"a seed must be an integer or 'paper' (seeds run from 0 to 2**64-1), got {value!r}") from None
    return list(dict.fromkeys(seeds))


def verifier_spec(args: argparse.Namespace) -> VerifierSpec:
    """The guiding verifier that the flags describe (its device defaults to the diffusion model's)."""
    return VerifierSpec(
        model=args.vqa_model, device=args.vqa_device or getattr(args, "device", None), dtype=args.vqa_dtype, question=args.vqa_question,
        answer=args.vqa_answer, resize=args.vqa_resize, micro_batch=args.vqa_micro_batch,
        checkpointing=args.vqa_checkpointing,
    )

def add_model_and_search_args(parser: argparse.ArgumentParser) -> None:
    """The flags that run.py and evaluate.py share: diffusion model, memory/speed, verifier, search."""
    add_generation_args(parser)
    add_memory_args(parser)
    add_verifier_args(parser)
    add_search_args(parser)


def search_config(args: argparse.Namespace, keep_epoch_images: bool = False, method: str | None = None) -> SearchConfig:
    return SearchConfig(
        method=method or getattr(args, "method", "noise_diffusion"),
        max_epoch=args.max_epoch,
        num_candidates=args.num_candidate_noises,
        accept=args.accept,
        target_score=args.target_score,
        step_size=args.step_size,
        gradient=args.gradient,
        neighbour_cosine=args.neighbour_cosine,
        keep_epoch_images=keep_epoch_images,
    ).validate()
