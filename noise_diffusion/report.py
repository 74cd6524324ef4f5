"""The evaluation report: tables (``summary.json``, ``summary.md``), image grids and best-so-far curves.

Everything is rebuilt from the finished result folders under a result root (``<root>/<method>/<prompt>/<seed>/``
with ``result.json`` and optional score files), so the report never depends on the process that generated the
results and ``evaluate.py --report DIR`` can redo it at any time.

Statistics, per method and category and over all runs (a run = one prompt and seed):
mean initial score, mean best score, gain = mean best - mean initial, share of runs whose best (and initial) score is
above 0.5 and 0.9, median epoch of the best image, mean model (UNet/transformer) forward and backward evaluations,
generations and seconds per run; the same score statistics for every held-out verifier, and the verifier hacking
against each: the guiding verifier's best score minus the held-out verifier's score of the same best image, with a
95 % bootstrap interval over prompts; the ablation row of every method (:mod:`noise_diffusion.ablation`: mean
best-so-far score at epochs 1, 5, 10 and the last, median epoch to reach 0.9, held-out score of the best image and
the latent's distance from the Gaussian prior). The paper's numbers stand beside a method's runs only when their
dataset is byte for byte one of the authors' files (by its SHA-256, never by its name).
"""

from __future__ import annotations

import math
import os
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .ablation import ablation_row
from .errors import UserError
from .intervals import compare
from .methods import METHODS
from .paper_datasets import PAPER_FILES
from .records import DatasetRef, RunRecord
from .report_figures import grid_names, plot_curves, plot_grid
from .report_markdown import markdown
from .results import RESULT_FILE, check_root, inspect_run, remove_temp_files, write_bytes_atomic, write_json_atomic
from .scorefiles import ImageScores, scores_in
from .settings import mixed
from .report_html import runs_from_collected, write_index_html

#: the paper's numbers, from a secondary summary of the paper (unverified): mean VQAScore (clip-flant5-xxl) per
#: prompt set of the authors (``paper-simple``, ``paper-complex``).
PAPER = {
    "simple": {"SD1.4": 0.700, "InitNO": 0.872, "Noise Diffusion (50 epochs)": 0.979},
    "complex": {"SD1.4": 0.650, "InitNO": 0.765, "Noise Diffusion (50 epochs)": 0.958},
}
PAPER_NOTE = ("paper's numbers from a secondary summary (unverified); comparable only with SD1.4, clip-flant5-xxl as "
              "guide and judge, 50 epochs and the full prompt set")
THRESHOLDS = (0.5, 0.9)
OVERALL = "overall"
GRID_ROWS = 8
#: A temporary file in the report's folder older than this was left by a killed writer (writes take milliseconds; the
#: folder is shared by every process that builds the report, so younger files may be another writer's).
STALE_SECONDS = 600
COMPUTE = ("model_evals", "model_backwards", "generations", "verifier_forward", "verifier_backward")


@dataclass(frozen=True)
class Run:
    """A finished run found under the result root, with the scores of its saved images."""

    record: RunRecord
    folder: Path
    held_out: dict[str, ImageScores] = field(default_factory=dict)
    png: dict[str, ImageScores] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return self.record.method

    @property
    def category(self) -> str:
        return self.record.category if self.record.category is not None else "all"


def paper_kind(dataset: DatasetRef | None) -> str | None:
    """``simple`` / ``complex`` when the dataset's bytes are the authors' file of that set, else None."""
    for name, paper_file in PAPER_FILES.items():
        if dataset is not None and dataset.sha256 == paper_file.sha256:
            return name.removeprefix("paper-")
    return None


# -------------------------------------------------------------------------------------------------------- collect

def collect(result_root: str | os.PathLike, skipped: list[dict] | None = None) -> list[Run]:
    """Every finished run under ``result_root``, with its score files attached.

    A folder enters only when :func:`~noise_diffusion.results.inspect_run` finds it intact and in its own place (its
    prompt's folder, its seed, its method's folder); ``skipped`` receives ``{"folder", "reason"}`` for every other
    folder with a ``result.json``, and for unreadable score files.
    """
    root = check_root(result_root)
    if not root.is_dir():
        raise UserError(f"result folder {str(root)!r} does not exist")
    skipped = [] if skipped is None else skipped
    runs = []
    for path in sorted(root.glob(f"*/*/*/{RESULT_FILE}")):
        folder = path.parent
        state = inspect_run(folder)
        if not state.finished:
            skipped.append({"folder": str(folder), "reason": state.reason})
            continue
        if state.record.method != folder.parent.parent.name:
            reason = f"{folder} holds a run of method {state.record.method!r}, which belongs in another folder"
            skipped.append({"folder": str(folder), "reason": reason})
            continue
        found = {}
        for kind in ("held_out", "png"):
            found[kind], problems = scores_in(folder, kind)
            skipped += [{"folder": problem.split(": ", 1)[0], "reason": problem} for problem in problems]
        runs.append(Run(state.record, folder, found["held_out"], found["png"]))
    return runs


# ----------------------------------------------------------------------------------------------------- statistics

def score_stats(initial: Sequence[float], best: Sequence[float]) -> dict:
    """Mean initial and best score, gain and the share of runs above each threshold."""
    n = len(best)
    stats = {"runs": n, "mean_initial": _mean(initial), "mean_best": _mean(best)}
    stats["gain"] = stats["mean_best"] - stats["mean_initial"] if n else math.nan
    for t in THRESHOLDS:
        stats[f"initial_above_{t}"] = sum(s > t for s in initial) / n if n else math.nan
        stats[f"best_above_{t}"] = sum(s > t for s in best) / n if n else math.nan
    return stats


def run_stats(runs: Sequence[Run]) -> dict:
    """Statistics of the guiding verifier's scores and the compute of a group of runs."""
    records = [r.record for r in runs]
    stats = score_stats([r.initial_score for r in records], [r.best_score for r in records])
    stats["prompts"] = len({r.prompt for r in records})
    stats["median_best_epoch"] = statistics.median(r.best_epoch for r in records) if records else math.nan
    for key in COMPUTE:
        stats[f"{key}_per_run"] = _mean([getattr(r.compute, key) for r in records])
    stats["seconds_per_run"] = _mean([r.seconds for r in records])
    return stats


def held_out_stats(runs: Sequence[Run], key: str = "held_out") -> dict[str, dict]:
    """Per held-out verifier: the score statistics of the runs it scored (``key="png"``: the guiding verifier's
    scores of the saved PNGs)."""
    out = {}
    for verifier in sorted({v for r in runs for v in getattr(r, key)}):
        scored = [getattr(r, key)[verifier] for r in runs if verifier in getattr(r, key)]
        out[verifier] = score_stats([s.initial_score for s in scored], [s.best_score for s in scored])
    return out


def hacking_stats(runs: Sequence[Run]) -> dict[str, dict]:
    """Per held-out verifier: guiding best score minus held-out best score (same image), mean over prompts with its
    bootstrap interval; positive means the search found what pleases the guide more than the held-out judge."""
    out = {}
    for verifier in sorted({v for r in runs for v in r.held_out}):
        scored = [r for r in runs if verifier in r.held_out]
        result = compare([r.record.best_score for r in scored], [r.held_out[verifier].best_score for r in scored],
                         [r.record.prompt for r in scored])
        out[verifier] = {"runs": len(scored), **result.as_dict()}
    return out


def best_so_far(record: RunRecord) -> list[float]:
    """The best score after each epoch of one run (epoch 0 = the initial image)."""
    curve, best = [], -math.inf
    for epoch in sorted(record.epochs, key=lambda e: e.epoch):
        best = max(best, epoch.score)
        curve.append(best)
    return curve


def mean_curve(records: Sequence[RunRecord]) -> dict:
    """Mean best-so-far score per epoch over runs (a run that stopped early keeps its last value), with the mean
    model evaluations spent up to each epoch."""
    curves = [best_so_far(r) for r in records]
    length = max(map(len, curves))
    padded = [c + [c[-1]] * (length - len(c)) for c in curves]
    per_generation = _mean([r.compute.model_evals / max(1, r.compute.generations) for r in records])
    return {
        "epoch": list(range(length)),
        "model_evals": [per_generation * (k + 1) for k in range(length)],
        "mean_best_so_far": [sum(col) / len(col) for col in zip(*padded)],
    }


def summarize(runs: Sequence[Run]) -> dict:
    """The whole report as one JSON-ready dict: per method, per category and overall."""
    by_method: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_method[run.method].append(run)
    summary = {"methods": {}, "paper": PAPER, "paper_note": PAPER_NOTE}
    order = list(METHODS)
    for method, method_runs in sorted(by_method.items(), key=lambda item: (_rank(order, item[0]), item[0])):
        summary["methods"][method] = method_summary(method_runs)
    summary["mixed_settings"] = {method: found for method, group in by_method.items()
                                 if (found := mixed([r.record.specs for r in group]))}
    summary["mixed_datasets"] = mixed_datasets(runs)
    return summary


def method_summary(runs: Sequence[Run]) -> dict:
    """The statistics of one method's runs, per category and overall."""
    by_category: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_category[run.category].append(run)
    groups = {**dict(sorted(by_category.items())), OVERALL: list(runs)}
    kinds = {paper_kind(r.record.dataset) for r in runs}
    kind = kinds.pop() if len(kinds) == 1 else None
    return {
        "verifiers": sorted({str(r.record.verifier.model) for r in runs}),
        "datasets": sorted({_dataset_label(r.record.dataset) for r in runs}),
        "dataset_kind": kind,
        "paper": PAPER.get(kind),
        "categories": {name: run_stats(group) for name, group in groups.items()},
        "held_out": {name: held_out_stats(group) for name, group in groups.items()},
        "png": {name: held_out_stats(group, "png") for name, group in groups.items()},
        "verifier_hacking": hacking_stats(runs),
        "curve": mean_curve([r.record for r in runs]),
        "ablation": ablation_row(runs),
    }


def mixed_datasets(runs: Sequence[Run]) -> list[str]:
    """The datasets of a root whose runs come from more than one (told apart by their SHA-256); empty when one."""
    found = {(r.record.dataset.sha256 or r.record.dataset.name) if r.record.dataset else None: r.record.dataset
             for r in runs}
    return sorted(_dataset_label(d) for d in found.values()) if len(found) > 1 else []


def _dataset_label(dataset: DatasetRef | None) -> str:
    if dataset is None:
        return "none recorded"
    return f"{dataset.name} (SHA-256 {dataset.sha256[:12]}…)" if dataset.sha256 else dataset.name


def _rank(order: list[str], name: str) -> int:
    return order.index(name) if name in order else len(order)


def _mean(values: Sequence[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else math.nan


# ---------------------------------------------------------------------------------------------------------- write

def write_report(result_root: str | os.PathLike, grid_rows: int = GRID_ROWS) -> dict:
    """Build ``summary.json``, ``summary.md``, one ``grid_<method>_<category>.png`` per method and category ,
    ``curves.png`` and ``index.html`` in ``result_root``."""
    root = check_root(result_root)
    skipped: list[dict] = []
    runs = collect(root, skipped)
    if not runs:
        also = f"; skipped {len(skipped)} damaged folders, e.g. {skipped[0]['reason']}" if skipped else ""
        raise UserError(f"no finished results under {str(root)!r} (expected <method>/<prompt>/<seed>/result.json)"
                        + also)
    remove_temp_files(root, older_than=STALE_SECONDS)
    summary = summarize(runs)
    summary["skipped"] = skipped
    figures = {"curves": "curves.png", "grids": {}}
    plot_curves(summary, root / figures["curves"])
    groups = _groups(runs)
    names = grid_names(list(groups))
    for (method, category), group in groups.items():
        plot_grid(group[:grid_rows], root / names[method, category], title=f"{method} / {category}: initial vs best")
        figures["grids"].setdefault(method, {})[category] = names[method, category]
    figures["index"] = write_index_html(root, runs_from_collected(runs)).name
    summary["figures"] = figures
    write_json_atomic(root / "summary.json", _json_safe(summary))
    write_bytes_atomic(root / "summary.md", markdown(summary, root).encode("utf-8"))
    return summary


def _groups(runs: Sequence[Run]) -> dict[tuple[str, str], list[Run]]:
    """Runs per (method, category), one seed per prompt first so a grid shows as many prompts as it can."""
    groups: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for run in sorted(runs, key=lambda r: (r.record.seed, str(r.folder))):
        groups[(run.method, run.category)].append(run)
    return groups


def _json_safe(value):
    """NaN -> None, so summary.json is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value
