"""The paper's main table, rebuilt from a report summary: rows SD, InitNO (and the other baselines), Noise Diffusion;
columns per category and overall; the paper's numbers beside ours.

Every cell shows two scores by the guiding verifier, named: **in-loop** (the mean best score as the run computed it,
on the image tensor) and **PNG** (the same verifier's score of the saved ``best.png`` read back through PIL, as a
baseline would be scored by anyone re-running it). The two differ only by the 8-bit rounding and the PIL path; the
PNG column is the one that scores every row the same way.
"""

from __future__ import annotations

import math

#: table rows: method -> (row label, the paper's row name in ``summary["paper"][kind]``)
ROWS = {
    "none": ("SD", "SD1.4"),
    "initno": ("InitNO", "InitNO"),
    "initno_noise_only": ("InitNO (noise only)", None),
    "attend_and_excite": ("A&E", None),
    "noise_diffusion": ("Noise Diffusion", "Noise Diffusion (50 epochs)"),
}
OVERALL = "overall"


def paper_rows(summary: dict) -> list[dict]:
    """One row per method of :data:`ROWS` present in ``summary``: per category, the mean best in-loop and PNG score."""
    rows = []
    for method, (label, paper_name) in ROWS.items():
        info = summary["methods"].get(method)
        if info is None:
            continue
        verifier = info["verifiers"][0] if len(info["verifiers"]) == 1 else None
        cells = {}
        for category, stats in info["categories"].items():
            png = info.get("png", {}).get(category, {}).get(verifier, {}) if verifier else {}
            cells[category] = {"runs": stats["runs"], "in_loop": stats["mean_best"],
                               "png": png.get("mean_best", math.nan), "png_runs": png.get("runs", 0)}
        kind = info.get("dataset_kind")
        paper = (summary.get("paper", {}).get(kind) or {}).get(paper_name) if paper_name else None
        overall = info["categories"][OVERALL]
        held_out = {v: h["mean_best"] for v, h in info.get("held_out", {}).get(OVERALL, {}).items()}
        rows.append({"method": method, "label": label, "verifier": verifier, "cells": cells, "paper": paper,
                     "held_out": held_out,
                     "kind": kind, "model_evals": overall.get("model_evals_per_run", math.nan),
                     "model_backwards": overall.get("model_backwards_per_run", math.nan),
                     "seconds": overall.get("seconds_per_run", math.nan)})
    return rows


def paper_table(summary: dict) -> list[str]:
    """Markdown lines of the table (none when the summary has fewer than two of its rows)."""
    rows = paper_rows(summary)
    if len(rows) < 2:
        return []
    categories = list(dict.fromkeys(c for row in rows for c in row["cells"] if c != OVERALL)) + [OVERALL]
    verifiers = sorted({str(r["verifier"]) for r in rows})
    kinds = sorted({str(r["kind"]) for r in rows if r["kind"]})
    judges = sorted({v for r in rows for v in r["held_out"]})
    header = ["method"] + [f"{table_cell(c)} (in-loop / PNG)" for c in categories] + (
        [f"paper ({', '.join(kinds)})"] if kinds else []) + [f"held-out {table_cell(v)}" for v in judges] + [
        "model evals / run", "model backwards / run", "s / run"]
    lines = ["## The paper's table", "",
             f"Mean best score by the guiding verifier ({', '.join(verifiers)}): *in-loop* = computed on the image "
             f"tensor during the run, *PNG* = the same verifier on the saved best.png through PIL"
             + (f"; held-out = {', '.join(judges)} on the same best.png, overall" if judges else "")
             + (f". The paper column: {summary.get('paper_note', 'the paper')}." if kinds else
                ". No paper column: no row's dataset is byte for byte one of the authors' prompt files."), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [_cell(row["cells"].get(c)) for c in categories]
        paper = ([f"{row['paper']:.3f}" if row["paper"] is not None else "–"] if kinds else [])
        held = [_num(row["held_out"].get(v, math.nan)) for v in judges]
        lines.append("| " + " | ".join([row["label"], *cells, *paper, *held, _num(row["model_evals"], 0),
                                        _num(row["model_backwards"], 0), _num(row["seconds"], 2)]) + " |")
    return lines + [""]


def table_cell(text) -> str:
    """Free text as one markdown table cell: ``|`` escaped, no line breaks."""
    return " ".join(str(text).split()).replace("\\", "\\\\").replace("|", "\\|")


def _cell(cell: dict | None) -> str:
    if not cell:
        return "–"
    return f"{_num(cell['in_loop'])} / {_num(cell['png'])}"


def _num(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"
