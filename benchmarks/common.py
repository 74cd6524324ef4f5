"""Shared pieces of the benchmarks: model presets, timing with device synchronisation, memory readings.

Presets (``--preset``), all built locally with no download:

- ``tiny``: the test suite's tiny SD1.x pipeline (32×32 images, 4×16×16 latents) and tiny CLIP verifier.
- ``toy``: the project's trained toy world when it is installed (``noise_diffusion/toy/assets``), otherwise
  an untrained pipeline of the toy world's shapes (32×32×3 images, 4×8×8 latents, DDIM 25 steps, guidance 5) with the
  tiny CLIP verifier.
- ``sd14``: the real architectures of ``CompVis/stable-diffusion-v1-4`` (UNet, VAE, CLIP ViT-L/14 text encoder, PNDM
  scheduler config) and a CLIP ViT-L/14 verifier, with random weights, from their published configurations
  (``random_weights.py``). Real-size cost without downloading anything; too slow to time many steps on a small CPU.

``--sd_version`` / ``--vqa_model`` replace a preset's generator / verifier with any model the library can load.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
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
from noise_diffusion.verifiers import load_verifier  # noqa: E402
from noise_diffusion.testing import build_tiny_clip, build_tiny_sd_pipeline, write_clip_tokenizer  # noqa: E402, F401

from random_weights import (  # noqa: E402, F401 (the random-weight models, importable from here too)
    CLIP_L336_VISION, CLIP_L_TEXT, CLIP_L_VISION, FLAN_T5, SCORER_SHAPES, SD14_SCHEDULER, SD14_UNET, SD14_VAE, _workdir,
    build_clip_flant5_verifier, build_clip_l_verifier, build_sd14, build_toy_shaped_pipeline, materialize,
)

PRESETS = ("tiny", "toy", "sd14")
#: the benchmarks' prompts for open-vocabulary verifiers
BENCHMARK_PROMPTS = ("a dog and a frog", "a red cube on top of a blue sphere", "a cat left of a clock",
                     "two birds and a bench")
#: prompts of the toy world's grammar: its verifier scores only these
TOY_PROMPTS = ["a 3 left of a 7", "a 1 above a 4", "a 2 and a 9", "a 5 right of a 8", "a 6 below a 0"]

# -- presets -----------------------------------------------------------------------------------------------------------
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
