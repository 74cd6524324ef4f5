"""Evaluation over a prompt set: the job list, sharding across processes, resume, and the whole run of evaluate.py.

A job is one (prompt, seed) for one method; its result lives in ``<result_root>/<method>/<prompt folder>/<seed>/`` in
the layout of ``run.py`` (:mod:`noise_diffusion.results`). ``result.json`` is written last and atomically, so a job
counts as done exactly when that file is a complete record of this job whose files decode
(:func:`~noise_diffusion.results.inspect_run`): a re-run skips it, redoes a damaged one, and a run killed at any moment
loses at most the batch in flight. Each process of ``accelerate launch`` takes every ``count``-th job (:func:`shard`);
every job is run under its folder's lock (:func:`~noise_diffusion.results.job_lock`), so two processes given the same
jobs (two shells, a shard given twice) never run one job twice or write the same folder.

Re-scoring the saved images (held-out verifiers, the guide's PNG re-score) is :mod:`noise_diffusion.rescoring`.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

import torch
from tqdm.auto import tqdm

from .baselines.tokens import require_subjects
from .datasets import PromptEntry
from .errors import UserError
from .methods import METHODS
from .optimize import SearchConfig, optimize
from .processes import Processes, processes  # noqa: F401 (re-exported)
from .records import DatasetRef, check_seed
from .results import RunFolder, RunState, check_root, check_writable, inspect_run, run_folder, save_run
from .rescoring import held_out_file, held_out_todo, rescore, rescore_held_out, rescore_todo  # noqa: F401
from .scorefiles import ScoreFile
from .context import run_context
from .settings import RunSpecs, describe
from .specs import GeneratorSpec, VerifierSpec
from .verifiers.base import check_prompts

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

    A folder holding another prompt's or seed's intact run is never taken as this job's result nor overwritten, and a
    run in an earlier version's layout is not redone without ``overwrite``: :class:`UserError` naming it. ``states``,
    when given, receives every job's :class:`RunState`.
    """
    todo = []
    for job in jobs:
        state = job_state(result_root, method, job)
        if state.status == "other":
            raise UserError(f"{state.reason}; move it away or use another --result_root")
        if state.status == "outdated" and not overwrite:
            raise UserError(state.reason)
        if states is not None:
            states[job] = state
        if overwrite or not state.finished:
            todo.append(job)
    return todo


def check_settings(jobs: Sequence[Job], result_root: str | os.PathLike, method: str, specs: RunSpecs,
                   states: dict[Job, RunState] | None = None) -> None:
    """Refuse to resume on top of finished runs made with other settings than ``specs``, which a re-run would
    silently keep: :class:`UserError` naming the first differing settings. ``states`` (from :func:`pending_jobs`)
    saves checking the folders again."""
    differing: dict[str, tuple] = {}
    count = 0
    for job in jobs:
        state = states[job] if states is not None and job in states else job_state(result_root, method, job)
        if not state.finished:
            continue
        found = state.record.differs_from(specs)
        for key, pair in found.items():
            differing.setdefault(key, pair)
        count += bool(found)
    if differing:
        raise UserError(f"{count} finished runs in {Path(result_root) / method} were made with other settings "
                        f"({describe(differing)}); use another --result_root, or --overwrite to redo them")


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
    dataset: DatasetRef | None = None,
    already_done: int = 0,
    specs: tuple | None = None,
) -> int:
    """Optimise ``jobs`` (already filtered by :func:`pending_jobs`) ``batch_size`` at a time and save each result.

    Every prompt is checked with the verifier before the first generation. Each job runs under its folder's lock: a job
    another process holds is left to it, one another process finished meanwhile is skipped. A run whose score turns
    non-finite is stopped and not saved; after the other jobs, :class:`UserError` lists such runs.

    Every record holds the job's category and the ``dataset``, so the report can group results without the dataset
    file, and ``specs`` (``(GeneratorSpec, VerifierSpec)``), the models the run was asked for (without them, the
    built models are described as they are). Returns the number of saved results.
    """
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    check_prompts(verifier, [job.prompt for job in jobs])
    context = run_context(generator, verifier, specs, dataset)
    saved, failures, started = 0, [], time.time()
    bar = tqdm(total=len(jobs), disable=not progress, desc=f"{search.method}", unit="run", dynamic_ncols=True)
    if already_done:
        bar.set_description(f"{search.method} ({already_done} already done)")
    best_total, position = 0.0, 0
    try:
        while position < len(jobs):
            with ExitStack() as locks:
                batch, position = _next_batch(jobs, position, batch_size, result_root, search.method, overwrite,
                                              started, locks, bar)
                if not batch:
                    continue
                indices = [list(j.indices) if j.indices else None for j in batch]
                results = optimize(generator, verifier, [j.prompt for j in batch], [j.seed for j in batch], search,
                                   progress=False, token_indices=indices)
                for job, result in zip(batch, results):
                    bar.update(1)
                    if result.failure:
                        failures.append(f"{job.prompt!r} seed {job.seed} ({result.failure})")
                        continue
                    folder = job_folder(result_root, search.method, job)
                    save_run(folder, result, replace(context, category=job.category))
                    saved, best_total = saved + 1, best_total + result.best_score
                if saved:
                    bar.set_postfix(mean_best=f"{best_total / saved:.3f}")
    finally:
        bar.close()
    if failures:
        raise UserError(f"{len(failures)} run{'s' if len(failures) > 1 else ''} stopped and not saved: "
                        + "; ".join(failures[:3]) + ("; ..." if len(failures) > 3 else ""))
    return saved


def _next_batch(jobs, position, batch_size, result_root, method, overwrite, started, locks, bar) -> tuple[list, int]:
    """The next ``batch_size`` jobs to run from ``position`` on, each with its folder's lock held in ``locks``; the
    jobs another process holds or finished meanwhile are counted on ``bar`` and left out."""
    batch = []
    while position < len(jobs) and len(batch) < batch_size:
        job = jobs[position]
        position += 1
        folder = RunFolder(job_folder(result_root, method, job))
        if not locks.enter_context(folder.lock()):
            bar.update(1)  # another process runs it
            continue
        state = folder.state(job.prompt, job.seed)
        if state.status == "other":
            raise UserError(f"{state.reason}; move it away or use another --result_root")
        if state.finished and (not overwrite or folder.written_since(started)):
            bar.update(1)  # another process finished (or, with overwrite, redid) it meanwhile
            continue
        batch.append(job)
    return batch, position


# ------------------------------------------------------------------------------------------------ the whole evaluation

def check_subjects(jobs: Sequence[Job], searches: Sequence[SearchConfig]) -> None:
    """The attention baselines need two subjects in every prompt without 'indices': checked before models load
    (:class:`UserError` otherwise; the other methods run any prompt)."""
    attention = [s.method for s in searches if METHODS[s.method].baseline]
    if attention:
        require_subjects([job.prompt for job in jobs if not job.indices], attention[0])


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
    from .datasets import load_dataset

    root = check_root(result_root)
    jobs = make_jobs(load_dataset(dataset, categories, limit), seeds)
    check_subjects(jobs, searches)
    on_cpu = (generator.device or "").startswith("cpu") or not torch.cuda.is_available()
    procs = processes(shard_of, cpu=on_cpu)
    mine = shard(jobs, procs.index, procs.count)
    generator = replace(generator, device=generator.device or procs.device)
    verifier = replace(verifier, device=verifier.device or generator.device)
    progress = progress and (procs.is_main or procs.barrier is None)
    todo = {s.method: _pending(mine, root, RunSpecs(generator, verifier, s), overwrite) for s in searches}
    if any(todo.values()):  # cheap checks of every model before any weights are loaded
        generator.check()
    verifier.check()
    held_out_spec = VerifierSpec(held_out, device=verifier.device, dtype=verifier.dtype) if held_out else None
    if held_out_spec is not None:  # it keeps its own question and answer: the flags set the guide's
        held_out_spec.check()
    check_writable(root)
    judge = None
    if any(todo.values()):
        judge = _run_searches(searches, todo, mine, root, generator, verifier, DatasetRef.of(dataset), procs,
                              batch_size=batch_size, overwrite=overwrite, progress=progress)
    folders = [job_folder(root, s.method, job) for s in searches for job in mine]
    options = {"batch_size": batch_size, "overwrite": overwrite, "progress": progress}
    if png_rescore and rescore_todo(folders, ScoreFile.png(verifier.model), overwrite):
        rescore(folders, judge or verifier.build(), ScoreFile.png(verifier.model), **options)
    del judge
    if held_out_spec is not None and held_out_todo(folders, held_out, overwrite):
        rescore_held_out(folders, held_out_spec.build(), held_out, **options)
    return _report(root, jobs, searches, procs)


def _pending(mine: list[Job], root: Path, specs: RunSpecs, overwrite: bool) -> list[Job]:
    """The jobs of one search still to run, after refusing finished runs made with other settings and noting the
    damaged ones."""
    method, states = specs.search.method, {}
    pending = pending_jobs(mine, root, method, overwrite, states=states)
    if not overwrite:
        check_settings(mine, root, method, specs, states)
    damaged = [job for job in mine if states[job].status == "invalid"]
    if damaged:
        print(f"{method}: redoing {len(damaged)} damaged run{'s' if len(damaged) > 1 else ''}, e.g. "
              f"{states[damaged[0]].reason}", file=sys.stderr)
    return pending


def _run_searches(searches, todo, mine, root, generator: GeneratorSpec, verifier: VerifierSpec, dataset: DatasetRef,
                  procs: Processes, **options):
    """Build the models once and run every search's pending jobs; returns the built guiding verifier."""
    model, judge = generator.build(), verifier.build()
    for search in searches:
        pending = todo[search.method]
        if not pending:
            continue
        saved = run_jobs(pending, model, judge, search, root, dataset=dataset, already_done=len(mine) - len(pending),
                         specs=(generator, verifier), **options)
        elsewhere = len(pending_jobs(pending, root, search.method))
        where = f" (shard {procs.index}/{procs.count})" if procs.count > 1 else ""
        print(f"{search.method}{where}: {saved} runs made here, {len(mine) - len(pending)} were already finished"
              + (f", {elsewhere} left to another process running them" if elsewhere else ""))
    return judge  # the diffusion model is freed on return, before the verifiers re-score


def _report(root: Path, jobs: list[Job], searches: Sequence[SearchConfig], procs: Processes) -> dict | None:
    """The report, built by the process whose turn it is."""
    from .report import write_report

    procs.wait()  # under accelerate: every process has written its results
    if procs.barrier is not None or procs.count == 1:
        return write_report(root) if procs.is_main else None
    if any(pending_jobs(jobs, root, s.method) for s in searches):
        print(f"shard {procs.index}/{procs.count} done; the report is built when every shard has finished "
              f"(or: python evaluate.py --report {root})")
        return None
    return write_report(root)  # the last explicit shard to finish builds it
