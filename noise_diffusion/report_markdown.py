"""``summary.md``: the report's summary dict as readable markdown tables (every free-text cell escaped)."""

from __future__ import annotations

import math
from pathlib import Path

from .paper_datasets import PAPER_FILES
from .paper_table import paper_table, table_cell as cell

OVERALL = "overall"


def fmt(value, digits: int = 3, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, (int, float)):
        return f"{value:{'+' if signed else ''}.{digits}f}"
    return str(value)


def markdown(summary: dict, root: Path | None = None) -> str:
    """The readable report."""
    lines = [f"# Evaluation summary{f': `{root}`' if root else ''}", ""]
    lines += overview_table(summary) + warnings(summary) + paper_lines(summary)
    lines += ablation_table(summary)
    lines.append("")
    lines += paper_table(summary)
    for method, info in summary["methods"].items():
        lines += method_section(method, info, summary.get("figures", {}).get("grids", {}).get(method, {}))
    if "figures" in summary:
        lines += ["## Best-so-far score", "", f"![mean best-so-far vs epochs and model evaluations]"
                  f"({summary['figures']['curves']})", ""]
    if summary.get("skipped"):
        lines += ["## Skipped folders", "", "Not counted above (an evaluate.py run of the same job redoes a damaged "
                  "run):", ""]
        lines += [f"- {item['reason']}" for item in summary["skipped"]]
        lines.append("")
    return "\n".join(lines)


def overview_table(summary: dict) -> list[str]:
    lines = ["| method | runs | initial | best | gain | best > 0.9 | model evals / run | s / run | held-out "
             "initial → best | guide − held-out [95 % CI] |", "|---|---|---|---|---|---|---|---|---|---|"]
    for method, info in summary["methods"].items():
        s = info["categories"][OVERALL]
        held = "; ".join(f"{cell(v)}: {fmt(h['mean_initial'])} → {fmt(h['mean_best'])}"
                         for v, h in info["held_out"][OVERALL].items()) or "–"
        hacking = "; ".join(f"{cell(v)}: {fmt(h['mean'], signed=True)} [{fmt(h['low'], signed=True)}, "
                            f"{fmt(h['high'], signed=True)}]"
                            for v, h in info.get("verifier_hacking", {}).items()) or "–"
        lines.append(f"| {cell(method)} | {s['runs']} | {fmt(s['mean_initial'])} | {fmt(s['mean_best'])} | "
                     f"{fmt(s['gain'], signed=True)} | {fmt(s['best_above_0.9'])} | {fmt(s['model_evals_per_run'], 1)} "
                     f"| {fmt(s['seconds_per_run'], 2)} | {held} | {hacking} |")
    return lines


def ablation_table(summary: dict) -> list[str]:
    """One row per method: convergence (best-so-far at epochs 1, 5, 10 and the last; epochs to 0.9) and the image's
    quality (held-out score of the best image; the latent's distance from N(0, I) at epoch 0 → the best epoch)."""
    lines = ["", "## Ablation: convergence and image quality", "",
             "| method | runs | best-so-far @1 | @5 | @10 | last | median epoch to 0.9 | never 0.9 | held-out best "
             "(guide − held-out) | ‖z‖²/D − 1 gap initial → best | KS vs N(0, 1) initial → best |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for method, info in summary["methods"].items():
        a = info["ablation"]
        held = "; ".join(f"{cell(v)}: {fmt(h['mean_best'])} ({fmt(h['guide_minus_held_out'], signed=True)})"
                         for v, h in a["held_out"].items()) or "–"
        prior = [f"{fmt(a[f'{key}_initial'], 4)} → {fmt(a[f'{key}_best'], 4)}" if a["prior_runs"] else "–"
                 for key in ("prior_norm_gap", "prior_ks")]
        lines.append(f"| {cell(method)} | {a['runs']} | {fmt(a['mean_best_at_epoch_1'])} | "
                     f"{fmt(a['mean_best_at_epoch_5'])} | {fmt(a['mean_best_at_epoch_10'])} | "
                     f"{fmt(a['mean_best_last'])} | {fmt(a['reach_0.9_median_epoch'], 1)} | "
                     f"{a['reach_0.9_never']} of {a['runs']} | {held} | {prior[0]} | {prior[1]} |")
    return lines + ["", "Best-so-far @k: mean over runs of the best score among epochs 0..k (– where a run's budget "
                        "ends earlier). Median epoch to 0.9: the first epoch scoring ≥ 0.9, runs that never do ranked "
                        "last (– when that is the median). The prior columns: means over the runs whose records hold "
                        "them; the gap is |‖z‖²/D − 1| (of the order of √(2/D) for a draw of N(0, I)), KS the "
                        "Kolmogorov–Smirnov statistic of z's entries against N(0, 1) (about 0.87/√D for such a draw)."]


def warnings(summary: dict) -> list[str]:
    lines = []
    for method, differing in summary.get("mixed_settings", {}).items():
        lines += ["", f"**Warning: the runs of {method} were made with different settings** ({differing}); their "
                      "means mix configurations."]
    if summary.get("mixed_datasets"):
        lines += ["", f"**Warning: this result root holds runs of different datasets** "
                      f"({', '.join(summary['mixed_datasets'])}); the rows pool them. Keep one result root "
                      "per dataset."]
    if any(info.get("verifier_hacking") for info in summary["methods"].values()):
        lines += ["", "Guide − held-out: the guiding verifier's best score minus the held-out verifier's score of "
                  "the same image, mean over prompts (seeds averaged first) with a 95 % bootstrap interval over "
                  "prompts; meaningful when the two verifiers score on comparable scales."]
    return lines


def paper_lines(summary: dict) -> list[str]:
    """The paper's numbers for the authors' prompt sets that runs used; one line for the methods whose dataset is
    none of them."""
    lines = []
    for kind in dict.fromkeys(info["dataset_kind"] for info in summary["methods"].values() if info["paper"]):
        paper = " · ".join(f"{k} {v:.3f}" for k, v in summary["paper"][kind].items())
        lines += ["", f"Paper, {kind} set, mean score: {paper}. Note: {summary['paper_note']}."]
    others = [method for method, info in summary["methods"].items() if not info["paper"]]
    if others:
        files = " or ".join(f.name for f in PAPER_FILES.values())
        lines += ["", f"No paper numbers for {', '.join(others)}: their dataset is not byte for byte the authors' "
                      f"{files} (compared by SHA-256)."]
    return lines


def method_section(method: str, info: dict, grids: dict) -> list[str]:
    lines = [f"## {method}", "", f"Guided by {', '.join(info['verifiers'])}; dataset {', '.join(info['datasets'])}.",
             "", "| category | runs | prompts | initial | best | gain | best > 0.5 | best > 0.9 | median best epoch | "
             "model evals / run | s / run |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for category, s in info["categories"].items():
        lines.append(
            f"| {_category(category)} | {s['runs']} | {s['prompts']} | {fmt(s['mean_initial'])} | "
            f"{fmt(s['mean_best'])} | {fmt(s['gain'], signed=True)} | {fmt(s['best_above_0.5'])} | "
            f"{fmt(s['best_above_0.9'])} | {fmt(s['median_best_epoch'], 1)} | {fmt(s['model_evals_per_run'], 1)} | "
            f"{fmt(s['seconds_per_run'], 2)} |")
    for verifier in sorted({v for groups in info["held_out"].values() for v in groups}):
        lines += ["", f"### held-out verifier {verifier}", "",
                  "| category | runs | initial | best | gain | best > 0.5 | best > 0.9 |",
                  "|---|---|---|---|---|---|---|"]
        for category, groups in info["held_out"].items():
            if verifier in groups:
                h = groups[verifier]
                lines.append(f"| {_category(category)} | {h['runs']} | {fmt(h['mean_initial'])} | "
                             f"{fmt(h['mean_best'])} | {fmt(h['gain'], signed=True)} | {fmt(h['best_above_0.5'])} | "
                             f"{fmt(h['best_above_0.9'])} |")
    if grids:
        lines += ["", "Initial (left) vs best (right): " + ", ".join(f"[{cell(c)}]({f})" for c, f in grids.items())]
    return lines + [""]


def _category(name: str) -> str:
    return f"**{name}**" if name == OVERALL else cell(name)
