"""The Python API: everything ``run.py`` does, reachable from Python.

    from noise_diffusion import GeneratorSpec, VerifierSpec, run

    result = run("a dog under a frog", seed=33,
                 generator=GeneratorSpec("CompVis/stable-diffusion-v1-4", device="cuda:0"),
                 verifier=VerifierSpec("clip-flant5-xxl"), result_root="results")
    result.best_image  # [3, H, W] in [0, 1]

The pieces (``load_generator``, ``load_verifier``, ``optimize``) are importable from :mod:`noise_diffusion` too.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Sequence

import torch

from .baselines.tokens import subject_words
from .errors import UserError  # noqa: F401 (re-exported for the CLIs)
from .images import tensor_to_pil
from .methods import METHODS
from .optimize import SearchConfig, optimize
from .results import (
    RunResult, adopt_legacy_run, check_seed, check_writable, describe_differences, expected_settings, inspect_run,
    job_lock, run_config,
    run_folder, save_image_atomic, save_run, setting_differences,
)
from .specs import GeneratorSpec, VerifierSpec


def run(
    prompt: str,
    seed: int = 33,
    *,
    generator: GeneratorSpec | None = None,
    verifier: VerifierSpec | None = None,
    search: SearchConfig | None = None,
    result_root: str | None = "results",
    save_all_epochs: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    token_indices: Sequence[int] | None = None,
) -> RunResult | dict:
    """Run the search for one prompt and seed with the models the specs describe; save the run under ``result_root``
    unless it is ``None``.

    ``token_indices`` are the subject tokens for the attention baselines (``initno``, ``attend_and_excite``; start
    token = 0); by default they are found from the prompt's words. Returns the :class:`RunResult`, or — when the run
    already finished in ``result_root`` and ``overwrite`` is false — the saved ``result.json`` record, untouched. A
    finished run made with other settings is an error (unless ``overwrite``); a damaged one is redone after a one-line
    note on stderr. The run holds its folder's lock, so a second process asking for the same prompt and seed stops with
    an error instead of writing the same folder.
    """
    if not prompt or not prompt.strip():
        raise UserError("the prompt is empty")
    check_seed(seed)
    search = (search or SearchConfig()).validate()
    generator_spec = (generator or GeneratorSpec()).check()  # cheap checks before any weights are loaded
    verifier_spec = (verifier or VerifierSpec()).check(generator_spec.device)
    if METHODS[search.method].baseline and not token_indices:
        subject_words(prompt)  # a prompt whose subjects cannot be found fails before any weights are loaded
    folder = None
    with ExitStack() as lock:
        if result_root is not None:
            folder = run_folder(check_writable(result_root), prompt, seed)
            adopt_legacy_run(result_root, prompt, seed)
            if not lock.enter_context(job_lock(folder)):
                raise UserError(f"another process is running {prompt!r} seed {seed} in {folder}")
            saved = _saved_run(folder, prompt, seed, overwrite, expected_settings(search, generator_spec, verifier_spec))
            if saved is not None:
                return saved
        model = generator_spec.build()
        judge = verifier_spec.build(generator_spec.device)

        def save_epoch_image(item: int, epoch: int, image: torch.Tensor, record: dict) -> None:
            save_image_atomic(folder / "epochs" / f"epoch_{epoch:03d}.png", tensor_to_pil(image)[0])

        on_epoch = save_epoch_image if folder is not None and save_all_epochs else None
        (result,) = optimize(model, judge, [prompt], [seed], search, progress=progress, on_epoch=on_epoch,
                             token_indices=[list(token_indices)] if token_indices else None)
        if result.failure:
            raise UserError(f"{prompt!r} seed {seed}: {result.failure}; the run is stopped and nothing is saved")
        if folder is not None:
            config = run_config(model, judge, search, seed, specs=(generator_spec, verifier_spec))
            save_run(folder, result, config, epoch_files_written=on_epoch is not None)
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


def build_generator(model: str, device: str | None = None, dtype: str = "float32", **settings):
    """Shorthand for ``GeneratorSpec(model, device, dtype, **settings).build()``."""
    return GeneratorSpec(model, device, dtype, **settings).build()


def build_verifier(model: str, device: str | None = None, dtype: str = "auto", **settings):
    """Shorthand for ``VerifierSpec(model, device, dtype, **settings).build()``."""
    return VerifierSpec(model, device, dtype, **settings).build()


def summary_line(result: RunResult | dict, folder: Path | None) -> str:
    record = result if isinstance(result, dict) else result.record()
    where = f" -> {folder}" if folder is not None else ""
    return (
        f"{record['prompt']!r} seed {record['seed']}: {record['initial_score']:.4f} -> "
        f"{record['best_score']:.4f} (epoch {record['best_epoch']}){where}"
    )
