"""The evaluation report: tables (``summary.json``, ``summary.md``), image grids and best-so-far curves.

Everything is rebuilt from the finished result folders under a result root (``<root>/<method>/<prompt>/<seed>/``
with ``result.json`` and optional ``heldout_*.json``), so the report never depends on the process that generated the
results and ``evaluate.py --report DIR`` can redo it at any time.

Statistics, per method and category and over all runs (a run = one prompt and seed):
mean initial score, mean best score, gain = mean best - mean initial, share of runs whose best (and initial) score is
above 0.5 and 0.9, median epoch of the best image, mean model (UNet/transformer) forward and backward evaluations,
generations and seconds per run; the same score statistics for every held-out verifier, and the verifier hacking
against each: the guiding verifier's best score minus the held-out verifier's score of the same best image, with a
95 % bootstrap interval over prompts. Results written before the compute field was renamed (``unet_evals``, now
``model_evals``) read the same.
"""

from __future__ import annotations

import io
import json
import math
import os
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from .errors import UserError
from .intervals import compare
from .methods import METHODS
from .paper_table import paper_table
from .report_html import runs_from_collected, write_index_html
from .results import (
    HELD_OUT_PREFIX, PNG_PREFIX, RESULT_FILE, held_out_problem, inspect_run, read_json, remove_temp_files,
    write_bytes_atomic, write_json_atomic,
)

#: the paper's numbers, from a secondary summary of the paper (unverified): mean VQAScore (clip-flant5-xxl) per dataset.
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


# -------------------------------------------------------------------------------------------------------- collect

def collect(result_root: str | os.PathLike, skipped: list[dict] | None = None) -> list[dict]:
    """Every finished run under ``result_root``, with its method, category and held-out scores attached.

    A folder enters only when :func:`~noise_diffusion.results.inspect_run` finds it intact and in its own place (its
    prompt's folder, its seed, its method's folder); ``skipped`` receives ``{"folder", "reason"}`` for every other
    folder with a ``result.json``, and for unreadable held-out files.
    """
    root = Path(result_root)
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
        record = state.record
        config = record["config"]
        search = config.get("search") if isinstance(config.get("search"), dict) else {}
        method = search.get("method", folder.parent.parent.name)
        if method != folder.parent.parent.name:
            skipped.append({"folder": str(folder), "reason": f"{folder} holds a run of method {method!r}, which "
                                                             f"belongs in another folder"})
            continue
        evaluation = config.get("evaluation") if isinstance(config.get("evaluation"), dict) else {}
        verifier = config.get("verifier") if isinstance(config.get("verifier"), dict) else {}
        held_out = _scores(folder, HELD_OUT_PREFIX, skipped)
        png = _scores(folder, PNG_PREFIX, skipped)
        runs.append({
            "method": method,
            "category": str(evaluation.get("category", "all")),
            "dataset": evaluation.get("name"),
            "dataset_kind": evaluation.get("kind"),
            "verifier": verifier.get("name"),
            "folder": folder,
            "record": record,
            "held_out": held_out,
            "png": png,
        })
    return runs


def _scores(folder: Path, prefix: str, skipped: list) -> dict[str, dict]:
    """verifier -> its scores of the saved images, from the valid ``<prefix>*.json`` files of a run folder; the
    invalid ones are listed in ``skipped``."""
    found = {}
    for file in sorted(folder.glob(f"{prefix}*.json")):
        try:
            scores = read_json(file)
            problem = held_out_problem(scores)
        except (OSError, ValueError, RecursionError) as error:
            problem = f"unreadable ({error})"
        if problem is not None:
            skipped.append({"folder": str(file), "reason": f"{file}: {problem}"})
            continue
        found[scores["verifier"]] = scores
    return found


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


def run_stats(runs: Sequence[dict]) -> dict:
    """Statistics of the guiding verifier's scores and the compute of a group of runs."""
    records = [r["record"] for r in runs]
    stats = score_stats([r["initial_score"] for r in records], [r["best_score"] for r in records])
    stats["prompts"] = len({r["prompt"] for r in records})
    stats["median_best_epoch"] = statistics.median(r["best_epoch"] for r in records) if records else math.nan
    for key in ("model_evals", "model_backwards", "generations", "verifier_forward", "verifier_backward"):
        stats[f"{key}_per_run"] = _mean([compute_value(r.get("compute", {}), key) for r in records])
    stats["seconds_per_run"] = _mean([r.get("seconds", math.nan) for r in records])
    return stats


#: compute fields under their earlier names
COMPUTE_ALIASES = {"model_evals": "unet_evals"}


def compute_value(compute: dict, key: str) -> float:
    """A compute field of a result record, read under its earlier name too; ``model_backwards`` is 0 in records made
    before it existed (no method then differentiated the diffusion model)."""
    if key in compute:
        return compute[key]
    if COMPUTE_ALIASES.get(key) in compute:
        return compute[COMPUTE_ALIASES[key]]
    return 0 if key == "model_backwards" and compute else math.nan


def held_out_stats(runs: Sequence[dict], key: str = "held_out") -> dict[str, dict]:
    """Per held-out verifier: the score statistics of the runs it scored (``key="png"``: the guiding verifier's
    scores of the saved PNGs)."""
    verifiers = sorted({v for r in runs for v in r.get(key, {})})
    out = {}
    for verifier in verifiers:
        scored = [r[key][verifier] for r in runs if verifier in r.get(key, {})]
        out[verifier] = score_stats([s["initial_score"] for s in scored], [s["best_score"] for s in scored])
    return out


def hacking_stats(runs: Sequence[dict]) -> dict[str, dict]:
    """Per held-out verifier: guiding best score minus held-out best score (same image), mean over prompts with its
    bootstrap interval; positive means the search found what pleases the guide more than the held-out judge."""
    out = {}
    for verifier in sorted({v for r in runs for v in r["held_out"]}):
        scored = [r for r in runs if verifier in r["held_out"]]
        result = compare([r["record"]["best_score"] for r in scored],
                         [r["held_out"][verifier]["best_score"] for r in scored],
                         [r["record"]["prompt"] for r in scored])
        out[verifier] = {"runs": len(scored), **result.as_dict()}
    return out


def best_so_far(record: dict) -> list[float]:
    """The best score after each epoch of one run (epoch 0 = the initial image)."""
    curve, best = [], -math.inf
    for epoch in sorted(record["epochs"], key=lambda e: e["epoch"]):
        best = max(best, epoch["score"])
        curve.append(best)
    return curve


def mean_curve(records: Sequence[dict]) -> dict:
    """Mean best-so-far score per epoch over runs (a run that stopped early keeps its last value), with the mean
    model evaluations spent up to each epoch."""
    curves = [best_so_far(r) for r in records]
    length = max(map(len, curves))
    padded = [c + [c[-1]] * (length - len(c)) for c in curves]
    per_generation = _mean([compute_value(r["compute"], "model_evals") / max(1, r["compute"]["generations"])
                            for r in records])
    return {
        "epoch": list(range(length)),
        "model_evals": [per_generation * (k + 1) for k in range(length)],
        "mean_best_so_far": [sum(col) / len(col) for col in zip(*padded)],
    }


def summarize(runs: Sequence[dict]) -> dict:
    """The whole report as one JSON-ready dict: per method, per category and overall."""
    by_method: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        by_method[run["method"]].append(run)
    summary = {"methods": {}, "paper": PAPER, "paper_note": PAPER_NOTE}
    order = list(METHODS)
    for method, method_runs in sorted(by_method.items(), key=lambda item: (_rank(order, item[0]), item[0])):
        by_category: dict[str, list[dict]] = defaultdict(list)
        for run in method_runs:
            by_category[run["category"]].append(run)
        groups = {**dict(sorted(by_category.items())), OVERALL: method_runs}
        kinds = {r["dataset_kind"] for r in method_runs}
        kind = kinds.pop() if len(kinds) == 1 else None
        summary["methods"][method] = {
            "verifiers": sorted({str(r["verifier"]) for r in method_runs}),
            "datasets": sorted({str(r["dataset"]) for r in method_runs}),
            "dataset_kind": kind,
            "paper": PAPER.get(kind),
            "categories": {name: run_stats(group) for name, group in groups.items()},
            "held_out": {name: held_out_stats(group) for name, group in groups.items()},
            "png": {name: held_out_stats(group, "png") for name, group in groups.items()},
            "verifier_hacking": hacking_stats(method_runs),
            "curve": mean_curve([r["record"] for r in method_runs]),
        }
    return summary


def _rank(order: list[str], name: str) -> int:
    return order.index(name) if name in order else len(order)


def _mean(values: Sequence[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else math.nan


# ---------------------------------------------------------------------------------------------------------- write

def write_report(result_root: str | os.PathLike, grid_rows: int = GRID_ROWS) -> dict:
    """Build ``summary.json``, ``summary.md``, ``grid_<method>_<category>.png``, ``curves.png`` and ``index.html`` in
    ``result_root``."""
    root = Path(result_root)
    skipped: list[dict] = []
    runs = collect(root, skipped)
    if not runs:
        also = f"; skipped {len(skipped)} damaged folders, e.g. {skipped[0]['reason']}" if skipped else ""
        raise UserError(f"no finished results under {str(root)!r} (expected <method>/<prompt>/<seed>/result.json)"
                        + also)
    remove_temp_files(root, older_than=STALE_SECONDS)
    summary = summarize(runs)
    summary["skipped"] = skipped
    summary["mixed_settings"] = mixed_settings(runs)
    figures = {"curves": "curves.png", "grids": {}}
    plot_curves(summary, root / figures["curves"])
    for (method, category), group in _groups(runs).items():
        name = f"grid_{_slug(method)}_{_slug(category)}.png"
        plot_grid(group[:grid_rows], root / name, title=f"{method} / {category}: initial vs best")
        figures["grids"].setdefault(method, {})[category] = name
    figures["index"] = write_index_html(root, runs_from_collected(runs)).name
    summary["figures"] = figures
    write_json_atomic(root / "summary.json", _json_safe(summary))
    _write_text_atomic(root / "summary.md", markdown(summary, root))
    return summary


#: Settings that must be the same for every run of a method for its means to describe one configuration.
COMPARED_SETTINGS = ("search.max_epoch", "search.num_candidates", "search.accept", "search.target_score",
                     "search.step_size", "verifier.name", "generator.model", "generator.num_steps",
                     "generator.guidance_scale", "generator.height", "generator.width", "generator.negative_prompt")


def mixed_settings(runs: Sequence[dict]) -> dict[str, str]:
    """Per method whose runs differ in any of :data:`COMPARED_SETTINGS`: which settings, with their values."""
    values: dict[str, dict[str, set]] = defaultdict(lambda: defaultdict(set))
    for run in runs:
        for key in COMPARED_SETTINGS:
            have = run["record"]["config"]
            for part in key.split("."):
                have = have.get(part) if isinstance(have, dict) else None
            values[run["method"]][key].add(json.dumps(have))
    return {method: ", ".join(f"{key.split('.')[-1]}: {' / '.join(sorted(seen))}"
                              for key, seen in keys.items() if len(seen) > 1)
            for method, keys in values.items() if any(len(seen) > 1 for seen in keys.values())}


def _groups(runs: Sequence[dict]) -> dict[tuple[str, str], list[dict]]:
    """Runs per (method, category), one seed per prompt first so a grid shows as many prompts as it can."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for run in sorted(runs, key=lambda r: (r["record"]["seed"], str(r["folder"]))):
        groups[(run["method"], run["category"])].append(run)
    return groups


def _fmt(value, digits: int = 3, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, (int, float)):
        return f"{value:{'+' if signed else ''}.{digits}f}"
    return str(value)


def markdown(summary: dict, root: Path | None = None) -> str:
    """The readable report."""
    lines = [f"# Evaluation summary{f': `{root}`' if root else ''}", ""]
    lines += ["| method | runs | initial | best | gain | best > 0.9 | model evals / run | s / run | held-out initial → best "
              "| guide − held-out [95 % CI] |", "|---|---|---|---|---|---|---|---|---|---|"]
    for method, info in summary["methods"].items():
        s = info["categories"][OVERALL]
        held = "; ".join(f"{v}: {_fmt(h['mean_initial'])} → {_fmt(h['mean_best'])}"
                        for v, h in info["held_out"][OVERALL].items()) or "–"
        hacking = "; ".join(f"{v}: {_fmt(h['mean'], signed=True)} [{_fmt(h['low'], signed=True)}, "
                            f"{_fmt(h['high'], signed=True)}]" for v, h in info.get("verifier_hacking", {}).items()) or "–"
        lines.append(f"| {method} | {s['runs']} | {_fmt(s['mean_initial'])} | {_fmt(s['mean_best'])} | "
                     f"{_fmt(s['gain'], signed=True)} | {_fmt(s['best_above_0.9'])} | {_fmt(s['model_evals_per_run'], 1)} | "
                     f"{_fmt(s['seconds_per_run'], 2)} | {held} | {hacking} |")
    for method, differing in summary.get("mixed_settings", {}).items():
        lines += ["", f"**Warning: the runs of {method} were made with different settings** ({differing}); their "
                      "means mix configurations."]
    if any(info.get("verifier_hacking") for info in summary["methods"].values()):
        lines += ["", "Guide − held-out: the guiding verifier's best score minus the held-out verifier's score of the same "
                  "image, mean over prompts (seeds averaged first) with a 95 % bootstrap interval over prompts; "
                  "meaningful when the two verifiers score on comparable scales."]
    kinds = dict.fromkeys(info["dataset_kind"] for info in summary["methods"].values() if info["paper"])
    for kind in kinds:
        paper = " · ".join(f"{k} {v:.3f}" for k, v in PAPER[kind].items())
        lines += ["", f"Paper, {kind} set, mean score: {paper}. Note: {summary['paper_note']}."]
    lines.append("")
    lines += paper_table(summary)
    for method, info in summary["methods"].items():
        lines += [f"## {method}", "",
                  f"Guided by {', '.join(info['verifiers'])}; dataset {', '.join(info['datasets'])}.", ""]
        lines += ["| category | runs | prompts | initial | best | gain | best > 0.5 | best > 0.9 | median best epoch | "
                  "model evals / run | s / run |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for category, s in info["categories"].items():
            name = f"**{category}**" if category == OVERALL else category
            lines.append(
                f"| {name} | {s['runs']} | {s['prompts']} | {_fmt(s['mean_initial'])} | {_fmt(s['mean_best'])} | "
                f"{_fmt(s['gain'], signed=True)} | {_fmt(s['best_above_0.5'])} | {_fmt(s['best_above_0.9'])} | "
                f"{_fmt(s['median_best_epoch'], 1)} | {_fmt(s['model_evals_per_run'], 1)} | "
                f"{_fmt(s['seconds_per_run'], 2)} |")
        verifiers = sorted({v for groups in info["held_out"].values() for v in groups})
        for verifier in verifiers:
            lines += ["", f"### held-out verifier {verifier}", "",
                      "| category | runs | initial | best | gain | best > 0.5 | best > 0.9 |", "|---|---|---|---|---|---|---|"]
            for category, groups in info["held_out"].items():
                if verifier in groups:
                    h = groups[verifier]
                    name = f"**{category}**" if category == OVERALL else category
                    lines.append(f"| {name} | {h['runs']} | {_fmt(h['mean_initial'])} | {_fmt(h['mean_best'])} | "
                                 f"{_fmt(h['gain'], signed=True)} | {_fmt(h['best_above_0.5'])} | {_fmt(h['best_above_0.9'])} |")
        grids = summary.get("figures", {}).get("grids", {}).get(method, {})
        if grids:
            lines += ["", "Initial (left) vs best (right): " + ", ".join(f"[{c}]({f})" for c, f in grids.items())]
        lines.append("")
    if "figures" in summary:
        lines += ["## Best-so-far score", "", f"![mean best-so-far vs epochs and model evaluations]"
                  f"({summary['figures']['curves']})", ""]
    if summary.get("skipped"):
        lines += ["## Skipped folders", "", "Not counted above (an evaluate.py run of the same job redoes a damaged "
                  "run):", ""]
        lines += [f"- {item['reason']}" for item in summary["skipped"]]
        lines.append("")
    return "\n".join(lines)


def plot_curves(summary: dict, path: Path) -> None:
    """Mean best-so-far score per method against epochs and against model evaluations (equal compute)."""
    plt = _pyplot()
    fig, (by_epoch, by_unet) = plt.subplots(1, 2, figsize=(10, 4))
    for method, info in summary["methods"].items():
        curve = info["curve"]
        marker = "o" if len(curve["epoch"]) == 1 else None
        by_epoch.plot(curve["epoch"], curve["mean_best_so_far"], label=method, marker=marker)
        by_unet.plot(curve["model_evals"], curve["mean_best_so_far"], label=method, marker=marker)
    by_epoch.set_xlabel("epoch (0 = initial image)")
    by_unet.set_xlabel("model evaluations per run")
    for axis in (by_epoch, by_unet):
        axis.set_ylabel("mean best-so-far score")
        axis.grid(alpha=0.3)
    by_epoch.legend()
    fig.tight_layout()
    _save_figure(fig, path)


def plot_grid(runs: Sequence[dict], path: Path, title: str = "") -> None:
    """One row per run: the initial image and the best image, with their scores."""
    from PIL import Image

    plt = _pyplot()
    rows = max(1, len(runs))
    fig, axes = plt.subplots(rows, 2, figsize=(5, 2.0 * rows + 0.4), squeeze=False)
    for row, run in enumerate(runs):
        record = run["record"]
        files = record.get("files", {"initial": "initial.png", "best": "best.png"})
        for col, key in enumerate(("initial", "best")):
            axis = axes[row][col]
            axis.axis("off")
            try:
                with Image.open(run["folder"] / files[key]) as image:
                    axis.imshow(image.convert("RGB"))
            except OSError:
                axis.text(0.5, 0.5, "missing", ha="center")
            label = f"{key} {record[f'{key}_score']:.3f}"
            if key == "best":
                label += f" (epoch {record['best_epoch']})"
            axis.set_title(label, fontsize=8)
        axes[row][0].text(-0.05, 0.5, f"{record['prompt']}\nseed {record['seed']}", transform=axes[row][0].transAxes,
                          ha="right", va="center", fontsize=7, wrap=True)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.subplots_adjust(left=0.35)
    _save_figure(fig, path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display; safe before pyplot is imported, and a no-op afterwards with Agg
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    _pyplot().close(fig)
    write_bytes_atomic(path, buffer.getvalue())


def _write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)[:60]


def _json_safe(value):
    """NaN -> None, so summary.json is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value

