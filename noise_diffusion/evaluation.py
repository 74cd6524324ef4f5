"""Evaluation over a prompt set: the job list, sharding across processes, resume, and held-out re-scoring.

A job is one (prompt, seed) for one method; its result lives in ``<result_root>/<method>/<prompt folder>/<seed>/`` in
the layout of ``run.py`` (:mod:`noise_diffusion.results`). ``result.json`` is written last and atomically, so a job
counts as done exactly when that file parses: a re-run skips it, a run killed at any moment loses at most the batch in
flight. Each process of ``accelerate launch`` takes every ``count``-th job (:func:`shard`) and writes only its own
folders, so processes never touch the same file.

Held-out re-scoring (:func:`rescore_held_out`) scores the saved ``initial.png`` and ``best.png`` with a verifier other
than the one that guided the search, and stores the two scores in ``heldout_<verifier>.json`` next to ``result.json``
(atomically; a re-run skips folders that have it). The best image stays the one the guiding verifier chose, so the
held-out gain shows how much of the improvement is not verifier hacking (DESIGN.md §1).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterable, Sequence

from PIL import Image
from tqdm.auto import tqdm

from .api import run_config
from .datasets import PromptEntry
from .errors import UserError
from .optimize import SearchConfig, optimize
from .results import RESULT_FILE, is_finished, read_json, run_folder, safe_folder_name, save_run, write_json_atomic

HELD_OUT_PREFIX = "heldout_"
#: scores of the saved PNGs by the *guiding* verifier (the same path as a held-out verifier's), so that every method's
#: row is scored alike: from its image file, through PIL
PNG_PREFIX = "png_"
BARRIER_TIMEOUT = timedelta(hours=72)


@dataclass(frozen=True, order=True)
class Job:
    """One (prompt, seed) of a dataset category."""

    prompt: str
    category: str
    seed: int
    indices: tuple[int, ...] | None = field(default=None, compare=False)  # subject tokens, for the attention baselines


def make_jobs(entries: Iterable[PromptEntry], seeds: Sequence[int]) -> list[Job]:
    """Every (prompt, seed) pair, prompt-major; a prompt listed twice is run once (it would share the folder)."""
    if not seeds:
        raise UserError("give at least one seed")
    jobs, seen = [], set()
    for entry in entries:
        for seed in seeds:
            key = (entry.prompt, int(seed))
            if key not in seen:
                seen.add(key)
                jobs.append(Job(entry.prompt, entry.category, int(seed), entry.indices))
    return jobs


def shard(jobs: Sequence[Job], index: int, count: int) -> list[Job]:
    """The jobs of process ``index`` out of ``count``: every ``count``-th, so all shards get similar work."""
    if count < 1 or not 0 <= index < count:
        raise UserError(f"shard {index}/{count} is impossible: need 0 <= index < count")
    return list(jobs[index::count])


def method_root(result_root: str | os.PathLike, method: str) -> Path:
    return Path(result_root) / method


def job_folder(result_root: str | os.PathLike, method: str, job: Job) -> Path:
    return run_folder(method_root(result_root, method), job.prompt, job.seed)


def pending_jobs(jobs: Sequence[Job], result_root: str | os.PathLike, method: str, overwrite: bool = False) -> list[Job]:
    """The jobs still to run (all of them with ``overwrite``)."""
    if overwrite:
        return list(jobs)
    return [job for job in jobs if not is_finished(job_folder(result_root, method, job))]


def check_settings(
    jobs: Sequence[Job], result_root: str | os.PathLike, method: str, expected: dict[str, Any]
) -> None:
    """Refuse to resume on top of finished runs made with other settings, which a re-run would silently keep.

    ``expected`` maps dotted keys of the recorded configuration (``"search.max_epoch"``) to the value this run uses, or
    to a tuple of accepted values. :class:`UserError` naming the first differing settings otherwise.
    """
    differing: dict[str, tuple] = {}
    count = 0
    for job in jobs:
        path = job_folder(result_root, method, job) / RESULT_FILE
        try:
            config = read_json(path).get("config", {})
        except (OSError, ValueError, AttributeError):
            continue
        found = False
        for key, want in expected.items():
            have = config
            for part in key.split("."):
                have = have.get(part) if isinstance(have, dict) else None
            accepted = want if isinstance(want, tuple) else (want,)
            if have not in accepted:
                differing.setdefault(key, (have, accepted[0]))
                found = True
        count += found
    if differing:
        what = ", ".join(f"{k.split('.')[-1]} {old!r} there, {new!r} now" for k, (old, new) in differing.items())
        raise UserError(f"{count} finished runs in {Path(result_root) / method} were made with other settings ({what}); "
                        f"use another --result_root, or --overwrite to redo them")


def run_jobs(
    jobs: Sequence[Job],
    generator,
    scorer,
    search: SearchConfig,
    result_root: str | os.PathLike,
    *,
    batch_size: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    dataset: dict | None = None,
    already_done: int = 0,
) -> int:
    """Optimise ``jobs`` (already filtered by :func:`pending_jobs`) ``batch_size`` at a time and save each result.

    ``dataset`` (e.g. ``{"name": ..., "kind": "simple"}``) is recorded in every result's configuration together with
    the job's category, so the report can group results without the dataset file. Returns the number of saved results.
    """
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    saved = 0
    bar = tqdm(total=len(jobs), disable=not progress, desc=f"{search.method}", unit="run", dynamic_ncols=True)
    if already_done:
        bar.set_description(f"{search.method} ({already_done} already done)")
    best_total, done = 0.0, 0
    try:
        for start in range(0, len(jobs), batch_size):
            batch = jobs[start:start + batch_size]
            results = optimize(generator, scorer, [j.prompt for j in batch], [j.seed for j in batch], search,
                               progress=False, token_indices=[list(j.indices) if j.indices else None for j in batch])
            for job, result in zip(batch, results):
                config = run_config(generator, scorer, search, job.seed)
                config["evaluation"] = {"category": job.category, **(dataset or {})}
                folder = job_folder(result_root, search.method, job)
                if overwrite or not is_finished(folder):  # another process may have finished it meanwhile
                    for prefix in (HELD_OUT_PREFIX, PNG_PREFIX):  # scores of the image being replaced
                        for stale in folder.glob(f"{prefix}*.json"):
                            stale.unlink()
                    save_run(folder, result, config)
                    saved += 1
                best_total, done = best_total + result.best_score, done + 1
                bar.update(1)
            bar.set_postfix(mean_best=f"{best_total / done:.3f}")
    finally:
        bar.close()
    return saved


# ------------------------------------------------------------------------------------------------ held-out scores

def held_out_file(folder: str | os.PathLike, verifier: str, prefix: str = HELD_OUT_PREFIX) -> Path:
    """Where the held-out scores of ``verifier`` for one run folder are stored (``prefix`` :data:`PNG_PREFIX`: the
    guiding verifier's scores of the saved images)."""
    return Path(folder) / f"{prefix}{safe_folder_name(verifier)}.json"


def rescore_held_out(
    folders: Sequence[str | os.PathLike],
    scorer,
    verifier: str,
    *,
    batch_size: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    prefix: str = HELD_OUT_PREFIX,
) -> int:
    """Score ``initial.png`` and ``best.png`` of every finished folder with ``scorer`` (named ``verifier``).

    Folders without a finished result, and (unless ``overwrite``) folders already scored by this verifier, are skipped.
    Returns the number of folders scored. ``prefix`` names the score files (see :func:`held_out_file`).
    """
    todo = held_out_todo(folders, verifier, overwrite, prefix)
    what = "PNG re-score" if prefix == PNG_PREFIX else "held-out"
    bar = tqdm(total=len(todo), disable=not progress, desc=f"{what} {verifier}", unit="run", dynamic_ncols=True)
    try:
        for start in range(0, len(todo), max(1, batch_size)):
            chunk = todo[start:start + max(1, batch_size)]
            records = [read_json(f / RESULT_FILE) for f in chunk]
            images, prompts = [], []
            for folder, record in zip(chunk, records):
                files = record.get("files", {"initial": "initial.png", "best": "best.png"})
                for key in ("initial", "best"):
                    with Image.open(folder / files[key]) as image:
                        images.append(image.convert("RGB"))
                    prompts.append(record["prompt"])
            scores = scorer.score_pil(images, prompts).tolist()
            for k, folder in enumerate(chunk):
                write_json_atomic(held_out_file(folder, verifier, prefix), {
                    "verifier": verifier, "initial_score": scores[2 * k], "best_score": scores[2 * k + 1],
                })
            bar.update(len(chunk))
    finally:
        bar.close()
    return len(todo)


def held_out_todo(
    folders: Sequence[str | os.PathLike], verifier: str, overwrite: bool = False, prefix: str = HELD_OUT_PREFIX
) -> list[Path]:
    """The finished folders that still lack (or, with ``overwrite``, have) held-out scores by ``verifier``."""
    return [Path(f) for f in folders if is_finished(f) and (overwrite or not _has_held_out(f, verifier, prefix))]


def _has_held_out(folder: str | os.PathLike, verifier: str, prefix: str = HELD_OUT_PREFIX) -> bool:
    try:
        read_json(held_out_file(folder, verifier, prefix))
    except (OSError, ValueError):
        return False
    return True


# ------------------------------------------------------------------------------------------------------ processes

@dataclass
class Processes:
    """Where this process stands among the evaluation's processes."""

    index: int = 0
    count: int = 1
    device: str | None = None  # the accelerator accelerate assigned to this process (None: the user's choice)
    barrier: object = None  # callable that waits for every process, when they are launched together

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def wait(self) -> None:
        if self.barrier is not None:
            self.barrier()


def processes(explicit: tuple[int, int] | None = None, cpu: bool = False) -> Processes:
    """This process's shard: ``explicit`` (index, count) as given, otherwise from accelerate's ``PartialState``.

    ``PartialState`` reads what ``accelerate launch`` (or torchrun) set in the environment; a plain ``python`` run is one
    process. ``cpu`` asks for CPU processes (gloo/MPI), which accelerate otherwise ignores. With an explicit shard there
    is no barrier: the processes may run at different times or on different machines.
    """
    if explicit is not None:
        index, count = explicit
        if count < 1 or not 0 <= index < count:
            raise UserError(f"shard {index}/{count} is impossible: need 0 <= index < count")
        return Processes(index, count)
    from accelerate import PartialState

    # the barrier before the report may wait for the slowest shard for hours: NCCL's default of 10 minutes is too short
    state = PartialState(cpu=cpu, timeout=BARRIER_TIMEOUT)
    device = str(state.device) if state.num_processes > 1 and state.device.type != "cpu" else None
    return Processes(state.process_index, state.num_processes, device, state.wait_for_everyone)
