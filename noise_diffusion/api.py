"""The Python API: everything ``run.py`` does, reachable from Python.

    from noise_diffusion import load_generator, load_scorer, optimize, SearchConfig, run

    result = run("a dog under a frog", seed=33, sd_version="CompVis/stable-diffusion-v1-4",
                 vqa_model="clip-flant5-xxl", device="cuda:0", result_root="results")
    result.best_image  # [3, H, W] in [0, 1]
"""

from __future__ import annotations

import math
import sys
from contextlib import ExitStack
from pathlib import Path
import torch

from .errors import UserError  # noqa: F401 (re-exported for the CLIs)
from .generators import generator_class, load_generator, pipeline_class_name, resolve_model
from .optimize import RunResult, SearchConfig, optimize
from .results import (
    adopt_legacy_run, check_seed, check_writable, describe_differences, expected_settings, inspect_run, job_lock,
    run_folder, save_image_atomic, save_run, setting_differences,
)
from .scorers import load_scorer, scorer_loader
from .scorers.base import tensor_to_pil

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def default_device() -> str:
    return "cuda:0" if torch.cuda.is_available() else "cpu"


def resolve_device(device: str | None) -> torch.device:
    """Check that a device string names a device this machine has."""
    device = device or default_device()
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as error:
        raise UserError(f"invalid device {device!r}") from error
    if parsed.type == "cuda" and (not torch.cuda.is_available() or (parsed.index or 0) >= torch.cuda.device_count()):
        raise UserError(f"device {device!r} is not available (torch sees {torch.cuda.device_count()} CUDA devices)")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device {device!r} is not available")
    return parsed


def resolve_dtype(name: str, device: torch.device, gpu_default: str = "float16") -> torch.dtype:
    """``auto`` means ``gpu_default`` on a GPU and float32 on the CPU."""
    if name == "auto":
        name = gpu_default if device.type != "cpu" else "float32"
    if name not in DTYPES:
        raise UserError(f"unknown dtype {name!r}; choose from auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def run(
    prompt: str,
    seed: int = 33,
    *,
    sd_version: str = "CompVis/stable-diffusion-v1-4",
    vqa_model: str = "clip-flant5-xxl",
    device: str | None = None,
    vqa_device: str | None = None,
    dtype: str = "float32",
    vqa_dtype: str = "auto",
    scheduler: str = "ddim",
    num_denoising_steps: int | None = None,
    guidance_scale: float | None = None,
    negative_prompt: str = "",
    height: int | None = None,
    width: int | None = None,
    generator_options: dict | None = None,
    scorer_options: dict | None = None,
    search: SearchConfig | None = None,
    result_root: str | None = "results",
    save_all_epochs: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> RunResult | dict:
    """Run Noise Diffusion for one prompt and seed; save the run under ``result_root`` unless it is ``None``.

    ``num_denoising_steps`` and ``guidance_scale`` default to the model's recommended settings (the paper's 50 steps
    and 7.5 for SD1.x/2.x). Returns the :class:`RunResult`, or — when the run already finished in ``result_root`` and ``overwrite`` is false —
    the saved ``result.json`` record, untouched. A finished run made with other settings is an error (unless
    ``overwrite``); a damaged one is redone after a one-line note on stderr. The run holds its folder's lock, so a
    second process asking for the same prompt and seed stops with an error instead of writing the same folder.
    """
    if not prompt or not prompt.strip():
        raise UserError("the prompt is empty")
    check_seed(seed)
    search = (search or SearchConfig()).validate()
    # cheap checks of both model names before any weights are loaded
    resolve_device(device)
    resolve_device(vqa_device or device)
    pipeline_class_name(resolve_model(sd_version))
    scorer_loader(vqa_model)
    folder = None
    with ExitStack() as lock:
        if result_root is not None:
            folder = run_folder(check_writable(result_root), prompt, seed)
            adopt_legacy_run(result_root, prompt, seed)
            if not lock.enter_context(job_lock(folder)):
                raise UserError(f"another process is running {prompt!r} seed {seed} in {folder}")
            saved = _saved_run(folder, prompt, seed, overwrite, expected_settings(
                search, vqa_model, scorer_options or {}, sd_version, resolve_model(sd_version), num_denoising_steps,
                guidance_scale, height, width, negative_prompt, scheduler, dtype))
            if saved is not None:
                return saved
        generator = build_generator(
            sd_version, device, dtype, scheduler=scheduler, num_steps=num_denoising_steps,
            guidance_scale=guidance_scale, negative_prompt=negative_prompt, height=height, width=width,
            **(generator_options or {}),
        )
        scorer = build_scorer(vqa_model, vqa_device or device, vqa_dtype, **(scorer_options or {}))

        def save_epoch_image(item: int, epoch: int, image: torch.Tensor, record: dict) -> None:
            save_image_atomic(folder / "epochs" / f"epoch_{epoch:03d}.png", tensor_to_pil(image)[0])

        on_epoch = save_epoch_image if folder is not None and save_all_epochs else None
        (result,) = optimize(generator, scorer, [prompt], [seed], search, progress=progress, on_epoch=on_epoch)
        if result.failure:
            raise UserError(f"{prompt!r} seed {seed}: {result.failure}; the run is stopped and nothing is saved")
        if folder is not None:
            save_run(folder, result, run_config(generator, scorer, search, seed),
                     epoch_files_written=on_epoch is not None)
    return result


def _saved_run(folder: Path, prompt: str, seed: int, overwrite: bool, expected: dict) -> dict | None:
    """The finished run in ``folder`` when it is this one and made with ``expected`` settings; None when the run is
    to be made (missing, damaged: with a one-line note, or ``overwrite``); :class:`UserError` when the folder holds
    another run or one made with other settings."""
    state = inspect_run(folder, prompt, seed)
    if state.status == "other":
        raise UserError(f"{state.reason}; move it away or use another result root")
    if state.status == "invalid":
        print(f"note: redoing the damaged run in {folder}: {state.reason}", file=sys.stderr)
    if not state.finished or overwrite:
        return None
    differing = setting_differences(state.record["config"], expected)
    if differing:
        raise UserError(f"{folder} holds a run made with other settings ({describe_differences(differing)}); "
                        f"use --overwrite to redo it, or another result root")
    return state.record


def quiet_loading() -> None:
    """Silence the libraries' per-file loading bars: the run's own progress bar is the one that matters."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def build_generator(sd_version: str, device: str | None, dtype: str, **options):
    quiet_loading()
    device_t = resolve_device(device)
    if (options.get("num_steps") or 1) < 1:
        raise UserError(f"num_denoising_steps must be >= 1, got {options['num_steps']}")
    if options.get("scheduler") not in (None, "ddim", "default"):
        raise UserError(f"unknown scheduler {options['scheduler']!r}; choose from ddim, default")
    if options.get("guidance_scale") is not None and not math.isfinite(options["guidance_scale"]):
        raise UserError(f"guidance_scale must be a finite number, got {options['guidance_scale']}")
    for key in ("height", "width"):
        if options.get(key) is not None and options[key] <= 0:
            raise UserError(f"{key} must be positive, got {options[key]}")
    preferred = getattr(generator_class(sd_version), "PREFERRED_DTYPE", "float16")
    return load_generator(sd_version, device_t, resolve_dtype(dtype, device_t, gpu_default=preferred), **options)


def build_scorer(vqa_model: str, device: str | None, dtype: str, **options):
    quiet_loading()
    device_t = resolve_device(device)
    return load_scorer(vqa_model, device_t, resolve_dtype(dtype, device_t, gpu_default="bfloat16"), **options)


def run_config(generator, scorer, search: SearchConfig, seed: int | None = None) -> dict:
    """The configuration recorded next to every result."""
    config = {
        "generator": generator.settings(),
        "scorer": {"name": scorer.name, "device": str(scorer.device), **_settings(scorer)},
        "search": {k: v for k, v in vars(search).items() if k != "keep_epoch_images"},
        "device": str(generator.device),
        "command": " ".join(sys.argv),
    }
    if seed is not None:
        config["seed"] = seed
    return config


def _settings(scorer) -> dict:
    settings = getattr(scorer, "settings", None)
    return dict(settings()) if callable(settings) else {}


def summary_line(result: RunResult | dict, folder: Path | None) -> str:
    record = result if isinstance(result, dict) else result.record()
    where = f" -> {folder}" if folder is not None else ""
    return (
        f"{record['prompt']!r} seed {record['seed']}: {record['initial_score']:.4f} -> "
        f"{record['best_score']:.4f} (epoch {record['best_epoch']}){where}"
    )

