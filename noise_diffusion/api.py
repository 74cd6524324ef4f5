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
from .records import RunRecord
from .results import RunFolder, check_root, check_seed, check_writable, save_image_atomic
from .results import run_folder  # noqa: F401 (re-exported for the CLI)
from .context import run_context
from .settings import RunSpecs, describe
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
) -> RunRecord:
    """Run the search for one prompt and seed with the models the specs describe; save the run under ``result_root``
    unless it is ``None``.

    ``token_indices`` are the subject tokens for the attention baselines (``initno``, ``attend_and_excite``; start
    token = 0); by default they are found from the prompt's words. Returns the :class:`RunRecord` with its tensors, or
    — when the run already finished in ``result_root`` and ``overwrite`` is false — the saved record (its ``images``
    None), untouched. A finished run made with other settings is an error (unless ``overwrite``); a damaged one is
    redone after a one-line note on stderr. The run holds its folder's lock, so a second process asking for the same
    prompt and seed stops with an error instead of writing the same folder.
    """
    if not prompt or not prompt.strip():
        raise UserError("the prompt is empty")
    check_seed(seed)
    if result_root is not None:
        check_root(result_root)
    search = (search or SearchConfig()).validate()
    generator_spec = (generator or GeneratorSpec()).check()  # cheap checks before any weights are loaded
    verifier_spec = (verifier or VerifierSpec()).check(generator_spec.device)
    if METHODS[search.method].baseline and not token_indices:
        subject_words(prompt)  # a prompt whose subjects cannot be found fails before any weights are loaded
    specs = RunSpecs(generator_spec, verifier_spec, search)
    folder = None
    with ExitStack() as lock:
        if result_root is not None:
            folder = RunFolder.of(check_writable(result_root), prompt, seed)
            if not lock.enter_context(folder.lock()):
                raise UserError(f"another process is running {prompt!r} seed {seed} in {folder.path}")
            saved = _saved_run(folder, prompt, seed, overwrite, specs)
            if saved is not None:
                return saved
        model, judge = generator_spec.build(), verifier_spec.build(generator_spec.device)
        on_epoch = _epoch_saver(folder) if folder is not None and save_all_epochs else None
        (result,) = optimize(model, judge, [prompt], [seed], search, progress=progress, on_epoch=on_epoch,
                             token_indices=[list(token_indices)] if token_indices else None)
        if result.failure:
            raise UserError(f"{prompt!r} seed {seed}: {result.failure}; the run is stopped and nothing is saved")
        result = run_context(model, judge, (generator_spec, verifier_spec)).apply(result)
        if folder is not None:
            folder.save(result, epoch_files_written=on_epoch is not None)
    return result


def _epoch_saver(folder: RunFolder):
    """An ``on_epoch`` that saves every epoch's image into the run's ``epochs/`` folder as it is made."""
    def save_epoch_image(item: int, epoch: int, image: torch.Tensor, record) -> None:
        save_image_atomic(folder.path / "epochs" / f"epoch_{epoch:03d}.png", tensor_to_pil(image)[0])

    return save_epoch_image


def _saved_run(folder: RunFolder, prompt: str, seed: int, overwrite: bool, specs: RunSpecs) -> RunRecord | None:
    """The finished run in ``folder`` when it is this one and made with ``specs``; None when the run is to be made
    (missing, damaged: with a one-line note, or ``overwrite``); :class:`UserError` when the folder holds another run,
    one made with other settings or one in an earlier version's layout."""
    state = folder.state(prompt, seed)
    if state.status == "other":
        raise UserError(f"{state.reason}; move it away or use another result root")
    if state.status == "invalid":
        print(f"note: redoing the damaged run in {folder.path}: {state.reason}", file=sys.stderr)
    if state.status == "outdated" and not overwrite:
        raise UserError(state.reason)
    if not state.finished or overwrite:
        return None
    differing = state.record.differs_from(specs)
    if differing:
        raise UserError(f"{folder.path} holds a run made with other settings ({describe(differing)}); "
                        f"use --overwrite to redo it, or another result root")
    return state.record


def build_generator(model: str, device: str | None = None, dtype: str = "float32", **settings):
    """Shorthand for ``GeneratorSpec(model, device, dtype, **settings).build()``."""
    return GeneratorSpec(model, device, dtype, **settings).build()


def build_verifier(model: str, device: str | None = None, dtype: str = "auto", **settings):
    """Shorthand for ``VerifierSpec(model, device, dtype, **settings).build()``."""
    return VerifierSpec(model, device, dtype, **settings).build()


def summary_line(record: RunRecord, folder: Path | None) -> str:
    where = f" -> {folder}" if folder is not None else ""
    return (f"{record.prompt!r} seed {record.seed}: {record.initial_score:.4f} -> {record.best_score:.4f} "
            f"(epoch {record.best_epoch}){where}")
