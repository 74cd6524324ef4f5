"""The report's figures: best-so-far curves per method, and a grid of initial vs best images per method and
category, each under a file name of its own."""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from pathlib import Path
from typing import Sequence

from .atomic import write_bytes_atomic


def grid_names(groups: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """A file name per (method, category): ``grid_<method>_<category>.png`` from safe characters, plus a short hash of
    the two names where two groups' slugs would collide (``left/right`` and ``left right``)."""
    slugs = {group: f"grid_{_slug(group[0])}_{_slug(group[1])}" for group in groups}
    taken = Counter(slug.lower() for slug in slugs.values())  # case-insensitive file systems, too
    names = {}
    for group, slug in slugs.items():
        if taken[slug.lower()] > 1:
            slug += "-" + hashlib.sha256("\0".join(group).encode("utf-8")).hexdigest()[:8]
        names[group] = f"{slug}.png"
    return names


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)[:60]


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


def plot_grid(runs: Sequence, path: Path, title: str = "") -> None:
    """One row per run (a :class:`~noise_diffusion.report.Run`): the initial and the best image, with their
    scores."""
    from PIL import Image

    plt = _pyplot()
    rows = max(1, len(runs))
    fig, axes = plt.subplots(rows, 2, figsize=(5, 2.0 * rows + 0.4), squeeze=False)
    for row, run in enumerate(runs):
        record = run.record
        shown = (("initial", record.files.initial, record.initial_score, ""),
                 ("best", record.files.best, record.best_score, f" (epoch {record.best_epoch})"))
        for col, (label, name, score, note) in enumerate(shown):
            axis = axes[row][col]
            axis.axis("off")
            try:
                with Image.open(run.folder / name) as image:
                    axis.imshow(image.convert("RGB"))
            except OSError:
                axis.text(0.5, 0.5, "missing", ha="center")
            axis.set_title(f"{label} {score:.3f}{note}", fontsize=8)
        axes[row][0].text(-0.05, 0.5, f"{record.prompt}\nseed {record.seed}", transform=axes[row][0].transAxes,
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
