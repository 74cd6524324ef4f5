"""Evaluation over a prompt set: the job list, sharding across processes, resume, and held-out re-scoring.

A job is one (prompt, seed) for one method; its result lives in ``<result_root>/<method>/<prompt folder>/<seed>/`` in
the layout of ``run.py`` (:mod:`noise_diffusion.results`). ``result.json`` is written last and atomically, so a job
counts as done exactly when that file is a complete record of this job whose files decode
(:func:`~noise_diffusion.results.inspect_run`): a re-run skips it, redoes a damaged one, and a run killed at any moment
loses at most the batch in flight. Each process of ``accelerate launch`` takes every ``count``-th job (:func:`shard`);
every job is run under its folder's lock (:func:`~noise_diffusion.results.job_lock`), so two processes given the same
jobs (two shells, a shard given twice) never run one job twice or write the same folder.

Held-out re-scoring (:func:`rescore_held_out`) scores the saved ``initial.png`` and ``best.png`` with a verifier other
than the one that guided the search, and stores the two scores in ``heldout_<verifier>.json`` next to ``result.json``
(atomically; a re-run skips folders that have it). The best image stays the one the guiding verifier chose, so the
held-out gain shows how much of the improvement is not verifier hacking.
"""

from __future__ import annotations

import math
import os
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm

from .datasets import PromptEntry
from .specs import GeneratorSpec, VerifierSpec
from .verifiers.base import check_prompts
from .errors import UserError
from .optimize import SearchConfig, optimize
from .results import (
    HELD_OUT_PREFIX, PNG_PREFIX, RESULT_FILE, RunState, adopt_legacy_run, check_seed, check_writable,
    describe_differences, expected_settings, held_out_problem, inspect_run, is_finished, job_lock, read_json,
    run_config, run_folder, safe_folder_name, save_run, setting_differences, write_json_atomic,
)

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
    seeds = [check_seed(int(seed)) for seed in seeds]
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


def job_state(result_root: str | os.PathLike, method: str, job: Job) -> RunState:
    """What the folder of ``job`` holds (see :func:`~noise_diffusion.results.inspect_run`)."""
    return inspect_run(job_folder(result_root, method, job), job.prompt, job.seed)


def pending_jobs(jobs: Sequence[Job], result_root: str | os.PathLike, method: str, overwrite: bool = False,
                 states: dict[Job, RunState] | None = None) -> list[Job]:
    """The jobs still to run (all of them with ``overwrite``): those without an intact result of their own.

    A folder holding another prompt's or seed's intact run is never taken as this job's result nor overwritten:
    :class:`UserError` naming it. A run an earlier version finished under its old folder name is moved to its folder
    (:func:`~noise_diffusion.results.adopt_legacy_run`). ``states``, when given, receives every job's
    :class:`RunState`.
    """
    todo = []
    for job in jobs:
        state = job_state(result_root, method, job)
        if state.status == "missing" and adopt_legacy_run(method_root(result_root, method), job.prompt, job.seed):
            state = job_state(result_root, method, job)
        if state.status == "other":
            raise UserError(f"{state.reason}; move it away or use another --result_root")
        if states is not None:
            states[job] = state
        if overwrite or not state.finished:
            todo.append(job)
    return todo


def check_settings(
    jobs: Sequence[Job], result_root: str | os.PathLike, method: str, expected: dict[str, Any],
    states: dict[Job, RunState] | None = None,
) -> None:
    """Refuse to resume on top of finished runs made with other settings, which a re-run would silently keep.

    ``expected`` maps dotted keys of the recorded configuration (``"search.max_epoch"``) to the value this run uses, or
    to a tuple of accepted values. :class:`UserError` naming the first differing settings otherwise. ``states`` (from
    :func:`pending_jobs`) saves checking the folders again.
    """
    differing: dict[str, tuple] = {}
    count = 0
    for job in jobs:
        state = states[job] if states is not None and job in states else job_state(result_root, method, job)
        if not state.finished:
            continue
        found = setting_differences(state.record["config"], expected)
        for key, pair in found.items():
            differing.setdefault(key, pair)
        count += bool(found)
    if differing:
        raise UserError(f"{count} finished runs in {Path(result_root) / method} were made with other settings "
                        f"({describe_differences(differing)}); use another --result_root, or --overwrite to redo them")


def run_jobs(
    jobs: Sequence[Job],
    generator,
    verifier,
    search: SearchConfig,
    result_root: str | os.PathLike,
    *,
    batch_size: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    dataset: dict | None = None,
    already_done: int = 0,
    specs: tuple | None = None,
) -> int:
    """Optimise ``jobs`` (already filtered by :func:`pending_jobs`) ``batch_size`` at a time and save each result.

    Every prompt is checked with the verifier before the first generation. Each job runs under its folder's lock: a job
    another process holds is left to it, one another process finished meanwhile is skipped. A run whose score turns
    non-finite is stopped and not saved; after the other jobs, :class:`UserError` lists such runs.

    ``dataset`` (e.g. ``{"name": ..., "kind": "simple"}``) is recorded in every result's configuration together with
    the job's category, so the report can group results without the dataset file; so are ``specs``
    (``(GeneratorSpec, VerifierSpec)``), the models the run was asked for. Returns the number of saved results.
    """
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    check_prompts(verifier, [job.prompt for job in jobs])
    saved, failures, started = 0, [], time.time()
    bar = tqdm(total=len(jobs), disable=not progress, desc=f"{search.method}", unit="run", dynamic_ncols=True)
    if already_done:
        bar.set_description(f"{search.method} ({already_done} already done)")
    best_total, done, position = 0.0, 0, 0
    try:
        while position < len(jobs):
            with ExitStack() as locks:
                batch = []
                while position < len(jobs) and len(batch) < batch_size:
                    job = jobs[position]
                    position += 1
                    if not locks.enter_context(job_lock(job_folder(result_root, search.method, job))):
                        bar.update(1)  # another process runs it
                        continue
                    state = job_state(result_root, search.method, job)
                    if state.status == "other":
                        raise UserError(f"{state.reason}; move it away or use another --result_root")
                    if state.finished and (not overwrite or _written_since(job_folder(result_root, search.method,
                                                                                      job), started)):
                        bar.update(1)  # another process finished (or, with overwrite, redid) it meanwhile
                        continue
                    batch.append(job)
                if not batch:
                    continue
                results = optimize(generator, verifier, [j.prompt for j in batch], [j.seed for j in batch], search,
                                   progress=False, token_indices=[list(j.indices) if j.indices else None for j in batch])
                for job, result in zip(batch, results):
                    bar.update(1)
                    if result.failure:
                        failures.append(f"{job.prompt!r} seed {job.seed} ({result.failure})")
                        continue
                    config = run_config(generator, verifier, search, job.seed, specs=specs)
                    config["evaluation"] = {"category": job.category, **(dataset or {})}
                    save_run(job_folder(result_root, search.method, job), result, config)
                    saved += 1
                    best_total, done = best_total + result.best_score, done + 1
                if done:
                    bar.set_postfix(mean_best=f"{best_total / done:.3f}")
    finally:
        bar.close()
    if failures:
        raise UserError(f"{len(failures)} run{'s' if len(failures) > 1 else ''} stopped and not saved: "
                        + "; ".join(failures[:3]) + ("; ..." if len(failures) > 3 else ""))
    return saved


def _written_since(folder: Path, moment: float) -> bool:
    try:
        return (folder / RESULT_FILE).stat().st_mtime >= moment
    except OSError:
        return False


# ------------------------------------------------------------------------------------------------ held-out scores

def held_out_file(folder: str | os.PathLike, verifier: str, prefix: str = HELD_OUT_PREFIX) -> Path:
    """Where the held-out scores of ``verifier`` for one run folder are stored (``prefix`` :data:`PNG_PREFIX`: the
    guiding verifier's scores of the saved images)."""
    return Path(folder) / f"{prefix}{safe_folder_name(verifier)}.json"


def rescore_held_out(
    folders: Sequence[str | os.PathLike],
    verifier,
    verifier_name: str,
    *,
    batch_size: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    prefix: str = HELD_OUT_PREFIX,
) -> int:
    """Score ``initial.png`` and ``best.png`` of every finished folder with ``verifier`` (named ``verifier_name``).

    Folders without a finished result, and (unless ``overwrite``) folders already scored by this verifier, are skipped.
    Each folder is scored under its lock, so a run being redone meanwhile never gets the old images' scores; folders
    another process holds are left out. A non-finite score is not saved; after the other folders, :class:`UserError`
    names such folders. Returns the number of folders scored.
    """
    todo = held_out_todo(folders, verifier_name, overwrite, prefix)
    check_prompts(verifier, [read_json(f / RESULT_FILE)["prompt"] for f in todo])
    failures, scored_count = [], 0
    what = "PNG re-score" if prefix == PNG_PREFIX else "held-out"
    bar = tqdm(total=len(todo), disable=not progress, desc=f"{what} {verifier_name}", unit="run", dynamic_ncols=True)
    try:
        for start in range(0, len(todo), max(1, batch_size)):
            with ExitStack() as locks:
                chunk = [f for f in todo[start:start + max(1, batch_size)] if locks.enter_context(job_lock(f))]
                scored_count += _rescore_chunk(chunk, verifier, verifier_name, overwrite, failures, prefix)
            bar.update(min(len(todo), start + max(1, batch_size)) - start)
    finally:
        bar.close()
    if failures:
        raise UserError(f"{what} verifier {verifier_name!r} gave non-finite scores, not saved, for {len(failures)} "
                        f"folder(s): {', '.join(failures[:3])}{', ...' if len(failures) > 3 else ''}")
    return scored_count


def _rescore_chunk(chunk: list[Path], verifier, verifier_name: str, overwrite: bool, failures: list[str],
                   prefix: str = HELD_OUT_PREFIX) -> int:
    """Score the locked folders of ``chunk`` that still need it; returns how many were saved."""
    # a folder may have changed before its lock was taken
    chunk = [f for f in chunk if f in held_out_todo([f], verifier_name, overwrite, prefix)]
    if not chunk:
        return 0
    records = [read_json(f / RESULT_FILE) for f in chunk]
    images, prompts = [], []
    for folder, record in zip(chunk, records):
        files = record.get("files", {"initial": "initial.png", "best": "best.png"})
        for key in ("initial", "best"):
            with Image.open(folder / files[key]) as image:
                images.append(image.convert("RGB"))
            prompts.append(record["prompt"])
    scores = verifier.score_pil(images, prompts).tolist()
    saved = 0
    for k, folder in enumerate(chunk):
        scored = {"verifier": verifier_name, "initial_score": scores[2 * k], "best_score": scores[2 * k + 1]}
        if held_out_problem(scored):
            failures.append(str(folder))
            continue
        write_json_atomic(held_out_file(folder, verifier_name, prefix), scored)
        saved += 1
    return saved


def held_out_todo(
    folders: Sequence[str | os.PathLike], verifier: str, overwrite: bool = False, prefix: str = HELD_OUT_PREFIX
) -> list[Path]:
    """The finished folders that still lack (or, with ``overwrite``, have) held-out scores by ``verifier``."""
    return [Path(f) for f in folders if is_finished(f) and (overwrite or not _has_held_out(f, verifier, prefix))]


def _has_held_out(folder: str | os.PathLike, verifier: str, prefix: str = HELD_OUT_PREFIX) -> bool:
    try:
        scores = read_json(held_out_file(folder, verifier, prefix))
    except (OSError, ValueError, RecursionError):
        return False
    return held_out_problem(scores) is None and scores["verifier"] == verifier


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


# ------------------------------------------------------------------------------------------------ the whole evaluation

def evaluate(
    dataset: str,
    seeds: Sequence[int],
    searches: Sequence[SearchConfig],
    generator: GeneratorSpec,
    verifier: VerifierSpec,
    result_root: str | os.PathLike,
    *,
    categories: Sequence[str] | None = None,
    limit: int | None = None,
    batch_size: int = 1,
    shard_of: tuple[int, int] | None = None,
    overwrite: bool = False,
    held_out: str | None = None,
    png_rescore: bool = True,
    progress: bool = True,
) -> dict | None:
    """Everything ``evaluate.py`` does: run every search method over the dataset's prompts and ``seeds`` (this
    process's shard of them), re-score the saved images with the guiding verifier (``png_rescore``) and with the
    ``held_out`` verifier, and write the report. The models are loaded once for all methods, and only when there is
    something to generate. Returns the report's summary, or None when another process builds it.
    """
    from .datasets import dataset_kind, load_dataset, resolve
    from .report import write_report

    entries = load_dataset(dataset, categories, limit)
    jobs = make_jobs(entries, seeds)
    on_cpu = (generator.device or "").startswith("cpu") or not torch.cuda.is_available()
    procs = processes(shard_of, cpu=on_cpu)
    mine = shard(jobs, procs.index, procs.count)
    root = Path(result_root)
    generator = replace(generator, device=generator.device or procs.device)
    verifier = replace(verifier, device=verifier.device or generator.device)
    progress = progress and (procs.is_main or procs.barrier is None)

    todo = {}
    for search in searches:
        states: dict = {}
        todo[search.method] = pending_jobs(mine, root, search.method, overwrite, states=states)
        if not overwrite:
            check_settings(mine, root, search.method, expected_settings(search, generator, verifier), states)
        damaged = [job for job in mine if states[job].status == "invalid"]
        if damaged:
            print(f"{search.method}: redoing {len(damaged)} damaged run{'s' if len(damaged) > 1 else ''}, e.g. "
                  f"{states[damaged[0]].reason}", file=sys.stderr)
    # cheap checks of every model before any weights are loaded
    if any(todo.values()):
        generator.check()
    verifier.check()
    held_out_spec = VerifierSpec(held_out, device=verifier.device, dtype=verifier.dtype) if held_out else None
    if held_out_spec is not None:  # it keeps its own question and answer: the flags set the guide's
        held_out_spec.check()
    check_writable(root)
    folders = [job_folder(root, s.method, job) for s in searches for job in mine]

    model = judge = None
    if any(todo.values()):
        model, judge = generator.build(), verifier.build()
        info = {"name": dataset, "kind": dataset_kind(resolve(dataset))}
        for search in searches:
            pending = todo[search.method]
            if not pending:
                continue
            saved = run_jobs(pending, model, judge, search, root, batch_size=batch_size, overwrite=overwrite,
                             progress=progress, dataset=info, already_done=len(mine) - len(pending),
                             specs=(generator, verifier))
            elsewhere = len(pending_jobs(pending, root, search.method))
            where = f" (shard {procs.index}/{procs.count})" if procs.count > 1 else ""
            print(f"{search.method}{where}: {saved} runs made here, {len(mine) - len(pending)} were already finished"
                  + (f", {elsewhere} left to another process running them" if elsewhere else ""))
        del model  # free the memory before the verifiers re-score
    if png_rescore and held_out_todo(folders, verifier.model, overwrite, PNG_PREFIX):
        judge = judge or verifier.build()
        rescore_held_out(folders, judge, verifier.model, batch_size=batch_size, overwrite=overwrite,
                         progress=progress, prefix=PNG_PREFIX)
    del judge
    if held_out_spec is not None and held_out_todo(folders, held_out, overwrite):
        rescore_held_out(folders, held_out_spec.build(), held_out, batch_size=batch_size, overwrite=overwrite,
                         progress=progress)

    procs.wait()  # under accelerate: every process has written its results
    if procs.barrier is not None or procs.count == 1:
        return write_report(root) if procs.is_main else None
    if any(pending_jobs(jobs, root, s.method) for s in searches):
        print(f"shard {procs.index}/{procs.count} done; the report is built when every shard has finished "
              f"(or: python evaluate.py --report {root})")
        return None
    return write_report(root)  # the last explicit shard to finish builds it
