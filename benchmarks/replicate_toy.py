#!/usr/bin/env python
"""Replicate the paper's claim in the toy world, with intervals, at equal generations and at equal seconds.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/replicate_toy.py            # docs/replication_toy.md
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/replicate_toy.py --quick    # docs/replication_toy_quick.md

Every search runs through the library's ``optimize()`` on the shipped ``toy-digits`` pipeline, guided by
``toy-digits-cnn``, with all items of both prompt samples in one batch per method. Each epoch's image is also judged
by the held-out verifiers ``toy-digits-heldout-resnet`` (the primary judge) and ``toy-digits-heldout`` (the MLP),
which the search never sees. A method's result after k generations is the image with the best *guiding* score among
its first k, as ``optimize()`` keeps it. Two disjoint prompt samples (each half held-out combinations, every relation)
are run with the same seeds; comparisons are paired by (prompt, seed) and their intervals resample prompts.

Seconds per generation are measured first, all methods interleaved in one process on the same items, so that the
load of a shared machine affects them alike; the equal-seconds comparison gives each method the generations that the
Noise Diffusion budget buys at its own measured rate.

The attention baselines (InitNO, Attend-and-Excite) make one image per item with many more UNet evaluations than a
generation of the searches; they run on the items of the first sample with ``--attention_seeds`` (``--attention none``
leaves them out) and are compared, paired, with the other methods on exactly those items, their compute beside them.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a clean clone without installing
    sys.path.insert(0, str(ROOT))

from noise_diffusion import load_generator, load_verifier  # noqa: E402
from noise_diffusion.cli import ArgumentParser, main_guard, non_negative_int, positive_int  # noqa: E402
from noise_diffusion.errors import UserError  # noqa: E402
from noise_diffusion.intervals import compare, mean_interval  # noqa: E402
from noise_diffusion.toy import world  # noqa: E402

from common import machine  # noqa: E402
from replicate_toy_runs import (  # noqa: E402, F401 (the measurements and names, importable from here too)
    ATTENTION, GUIDE, JUDGE, JUDGES, LABELS, SEARCHES, SHORT, SIGNIFICANCE, Row, affordable, at_generations,
    best_index, calibration, default_rows, load_raw, measure_and_run, measure_seconds, run_attention, run_search,
    save_raw, search_compute,
)
from replicate_toy_report import (  # noqa: E402, F401
    attention_section, both_samples_agree, calibration_table, conclusions, curves_figure, fmt_ci, fmt_mean,
    images_figure, render,
)


# -- prompts -----------------------------------------------------------------------------------------------------------
def choose_prompt_samples(count: int, samples: int = 2, seed: int = 1) -> list[list[str]]:
    """``samples`` disjoint lists of ``count`` prompts, each half held-out and half seen combinations, relations in
    turn (deterministic; the prompts are drawn without replacement across the samples)."""
    rng = np.random.default_rng(seed)
    every = [world.make_prompt(a, r, b) for r in world.RELATIONS for a in range(10) for b in range(10) if a != b]
    pools = {}
    for held in (True, False):
        for relation in world.RELATIONS:
            pool = [p for p in every if world.is_held_out_prompt(p) == held and world.parse_prompt(p).relation == relation]
            rng.shuffle(pool)
            pools[held, relation] = pool
    out: list[list[str]] = [[] for _ in range(samples)]
    for s in range(samples):
        for held, n in ((True, count // 2), (False, count - count // 2)):
            for i in range(n):
                pool = pools[held, world.RELATIONS[i % 5]]
                if not pool:
                    raise UserError(f"not enough {'held-out' if held else 'seen'} prompts for {samples} samples of {count}")
                out[s].append(pool.pop())
    return out


# -- statistics --------------------------------------------------------------------------------------------------------
def pair_table(values: dict[str, np.ndarray], labels: list[str], groups_by_sample: list[np.ndarray],
               masks: list[np.ndarray], resamples: int) -> list[dict]:
    """Every pair (a, b) of labels, with a - b per sample and pooled."""
    pooled_groups = np.concatenate(groups_by_sample)
    pairs = []
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            entry = {"a": a, "b": b, "samples": []}
            for mask, groups in zip(masks, groups_by_sample):
                entry["samples"].append(compare(values[a][mask], values[b][mask], groups, resamples=resamples).as_dict())
            entry["pooled"] = compare(values[a], values[b], pooled_groups, resamples=resamples).as_dict()
            entry["verdict"] = verdict(a, b, entry["pooled"])
            pairs.append(entry)
    return pairs


def verdict(a: str, b: str, result: dict) -> str:
    """Supported when the pooled 95 % interval excludes zero and the sign test agrees; otherwise not significant."""
    if result["significant"] and result["sign_p"] < SIGNIFICANCE:
        return f"supported: {a} > {b}" if result["mean"] > 0 else f"supported: {b} > {a}"
    if result["significant"]:
        return "interval excludes 0, sign test does not (p = {:.2f})".format(result["sign_p"])
    return "not significant"


# -- output ------------------------------------------------------------------------------------------------------------


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a smaller run (10 prompts per sample, seeds 0 1 in the first, baselines at 5 epochs, Noise Diffusion 5 and "
                             "10) written "
                             "to docs/replication_toy_quick.* unless --out is given")
    parser.add_argument("--prompts", type=positive_int, default=None, help="prompts per sample (default 40; quick 10)")
    parser.add_argument("--samples", type=positive_int, default=2, help="disjoint prompt samples (default: %(default)s)")
    parser.add_argument("--seeds", type=non_negative_int, nargs="+", default=None,
                        help="seeds of every prompt of the first sample (default 0 1 2 3; quick 0 1)")
    parser.add_argument("--later_seeds", type=non_negative_int, nargs="+", default=[0],
                        help="seeds of every prompt of the later samples (default: %(default)s)")
    parser.add_argument("--baseline_epochs", type=non_negative_int, default=None,
                        help="epochs of best-of-N, random diffusion and gradient ascent at equal generations "
                             "(default 10; quick 5)")
    parser.add_argument("--nd_epochs", type=non_negative_int, nargs="+", default=None,
                        help="Noise Diffusion rows (default 5 10 20; quick 5 10)")
    parser.add_argument("--candidates", type=positive_int, default=50, help="candidate noises per Noise Diffusion epoch")
    parser.add_argument("--timing_items", type=positive_int, default=16, help="items per timing run (default: %(default)s)")
    parser.add_argument("--timing_epochs", type=non_negative_int, default=2, help="epochs per timing run (default: %(default)s)")
    parser.add_argument("--timing_rounds", type=positive_int, default=4, help="interleaved timing rounds (default: %(default)s)")
    parser.add_argument("--resamples", type=positive_int, default=10_000, help="bootstrap resamples (default: %(default)s)")
    parser.add_argument("--calibration", type=positive_int, default=600, help="canvases per calibration case")
    parser.add_argument("--match_all_budgets", action="store_true",
                        help="run the baselines long enough to match every Noise Diffusion budget in seconds (by "
                             "default only budgets of at most --baseline_epochs epochs)")
    parser.add_argument("--attention", choices=("on", "none"), default="on",
                        help="run InitNO and Attend-and-Excite on the first sample's items with --attention_seeds and "
                             "add their table (default: %(default)s; 4.5-6 CPU-s per item for the two)")
    parser.add_argument("--attention_seeds", type=non_negative_int, nargs="+", default=None,
                        help="seeds of the first sample that the attention baselines run on (default: all of them)")
    parser.add_argument("--raw", default=None,
                        help="keep every score in this .npz; when it exists, re-render from it instead of running")
    parser.add_argument("--model", default="toy-digits", help="pipeline folder or name (default: the shipped one)")
    parser.add_argument("--out", default=None, help="markdown file; the JSON and figures are written beside it "
                                                    "(default docs/replication_toy.md, quick: ..._quick.md)")
    return parser


@dataclass(frozen=True)
class Items:
    """The run's items: every prompt of every sample with that sample's seeds, prompt-major, and their groupings."""

    samples: list[list[str]]
    sample_seeds: list[list[int]]
    prompts: list[str]
    seeds: list[int]
    masks: list[np.ndarray]  # per sample: which items are its own
    groups: np.ndarray  # the prompt of every item (the intervals resample prompts)
    held_mask: np.ndarray  # items whose prompt is a held-out combination
    keep: list[int]  # the items whose best images are shown (held-out combinations, first seed)

    @property
    def groups_by_sample(self) -> list[np.ndarray]:
        return [self.groups[m] for m in self.masks]


def layout(samples: list[list[str]], first_seeds: list[int], later_seeds: list[int]) -> Items:
    sample_seeds = [first_seeds] + [later_seeds] * (len(samples) - 1)
    prompts = [p for sample, ss in zip(samples, sample_seeds) for p in sample for _ in ss]
    seeds = [s for sample, ss in zip(samples, sample_seeds) for _ in sample for s in ss]
    sample_of = np.array([k for k, (sample, ss) in enumerate(zip(samples, sample_seeds)) for _ in sample for _ in ss])
    keep = [i for i, p in enumerate(prompts) if world.is_held_out_prompt(p) and seeds[i] == first_seeds[0]][:8]
    return Items(samples, sample_seeds, prompts, seeds, [sample_of == k for k in range(len(samples))],
                 np.array(prompts), np.array([world.is_held_out_prompt(p) for p in prompts]), keep)


@dataclass(frozen=True)
class Models:
    generator: object
    guide: object
    judges: list


def searches(models: Models, items: Items, rows: list[Row], nd_epochs: list[int], args) -> tuple[dict, dict, bool]:
    """(timing, runs, reused): the searches' timing and scores, read from ``--raw`` when it exists."""
    raw = Path(args.raw) if args.raw else None
    if raw is not None and raw.exists():  # re-render from the scores of an earlier run with the same settings
        timing, runs = load_raw(raw)
        print(f"scores read from {raw}", flush=True)
        return timing, runs, True
    timing, runs = measure_and_run(models.generator, models.guide, models.judges, items.prompts, items.seeds, rows,
                                   nd_epochs, items.keep, args)
    if raw is not None:
        save_raw(raw, timing, runs)
    return timing, runs, False


def attention_runs(models: Models, items: Items, runs: dict, timing: dict, args) -> tuple[dict, np.ndarray, list]:
    """(attention, its items, the methods run now): the attention baselines on the first sample's items with
    ``--attention_seeds``, cached in the raw file beside the searches' scores."""
    first_seeds = items.sample_seeds[0]
    attention = {m: runs.pop(m) for m in ATTENTION if m in runs}
    attention_seeds = args.attention_seeds or first_seeds
    if not set(attention_seeds) <= set(first_seeds):
        raise UserError(f"--attention_seeds {attention_seeds} must be seeds of the first sample ({first_seeds})")
    chosen = np.flatnonzero(items.masks[0] & np.isin(np.array(items.seeds), attention_seeds))
    if args.attention != "on":
        return {}, chosen, []
    missing = [m for m in ATTENTION if m not in attention or not np.array_equal(attention[m]["items"], chosen)]
    for method in missing:
        attention[method] = run_attention(models.generator, models.guide, models.judges, items.prompts, items.seeds,
                                          chosen, method)
        print(f"{LABELS[method]}: {len(chosen)} items, {attention[method]['seconds']:.0f} s", flush=True)
    if missing and args.raw:
        save_raw(Path(args.raw), timing, {**runs, **attention})
    return attention, chosen, missing


def equal_generations(runs_for: dict, rows: list[Row], items: Items, resamples: int) -> tuple[list, dict, dict]:
    """(table rows, held-out values per judge and row, guiding values per row) at each row's generations."""
    values = {judge: {r.label: at_generations(runs_for[r.label], judge, r.generations) for r in rows}
              for judge in JUDGES}
    guide_values = {r.label: at_generations(runs_for[r.label], "guide", r.generations) for r in rows}
    groups, held = items.groups, items.held_mask
    table = []
    for row in rows:
        entry = {"label": row.label, "method": row.method, "generations": row.generations,
                 "guiding": mean_interval(guide_values[row.label], groups, resamples=resamples)}
        for judge in JUDGES:
            v = values[judge][row.label]
            faithful = at_generations(runs_for[row.label], judge + ":faithful", row.generations)
            entry[judge] = {
                "score": mean_interval(v, groups, resamples=resamples),
                "accuracy": mean_interval(faithful, groups, resamples=resamples),
                "seen": float(v[~held].mean()), "held_out_combinations": float(v[held].mean()),
                "per_sample": [float(v[m].mean()) for m in items.masks],
                "hacking": compare(guide_values[row.label], v, groups, resamples=resamples).as_dict(),
            }
        table.append(entry)
    return table, values, guide_values


def equal_seconds(runs: dict, rates: dict, nd_epochs: list[int], items: Items, resamples: int) -> list[dict]:
    """Each search gets the generations that Noise Diffusion's budget at k epochs buys at its own rate."""
    blocks = []
    for epochs in nd_epochs:
        budget = (epochs + 1) * rates["noise_diffusion"]
        block = {"nd_epochs": epochs, "budget_ms_per_item": budget * 1000, "methods": {}}
        at_budget = {}
        for method in SEARCHES:
            available = runs[method]["guide"].shape[1]
            n, capped = affordable(budget, rates[method], available) if method != "noise_diffusion" else (epochs + 1, False)
            if capped:  # the run is shorter than the budget: leave the method out rather than show it handicapped
                block.setdefault("not_run", []).append(LABELS[method])
                continue
            v = at_budget[LABELS[method]] = at_generations(runs[method], JUDGE, n)
            block["methods"][LABELS[method]] = {"generations": n,
                                                "score": mean_interval(v, items.groups, resamples=resamples),
                                                "guiding": float(at_generations(runs[method], "guide", n).mean())}
        if len(block["methods"]) < 2:
            continue  # no baseline ran long enough for this budget
        block["ranking"] = sorted(block["methods"], key=lambda k: -block["methods"][k]["score"][0])
        block["pairs"] = pair_table(at_budget, block["ranking"], items.groups_by_sample, items.masks, resamples)
        blocks.append(block)
    return blocks


#: the report's sections from this line on are other benchmarks' (``ablation_toy.py``, ``noise_search_toy.py``)
KEPT_MARKER = "<!-- sections below are written by other benchmarks; replicate_toy.py keeps them when it rewrites the rest -->"


def with_kept_sections(text: str, out: Path) -> str:
    """``text``, followed by the existing report's part from ``KEPT_MARKER`` on, so that a rewrite loses nothing."""
    old = out.read_text(encoding="utf-8") if out.exists() else ""
    if KEPT_MARKER not in old:
        return text
    return text.rstrip("\n") + "\n\n" + KEPT_MARKER + old.split(KEPT_MARKER, 1)[1]


def spent(wall: float, cpu: float, timing: dict, attention: dict, missing: list, reused: bool) -> dict:
    """Wall and CPU seconds of the run; a re-rendered report counts the cached runs' time too (the searches' clock
    and the attention baselines')."""
    cached = timing.get("clock") if reused else None
    earlier = [r for m, r in attention.items() if m not in missing]
    return {"wall_seconds": wall + (cached["wall_seconds"] if cached else 0) + sum(float(r["seconds"]) for r in earlier),
            "cpu_seconds": cpu + (cached["cpu_seconds"] if cached else 0)
            + sum(float(r["cpu_per_item"]) * len(r["items"]) for r in earlier)}


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    quick, started, cpu_started = args.quick, time.perf_counter(), time.process_time()
    first_seeds = args.seeds or ([0, 1] if quick else [0, 1, 2, 3])
    nd_epochs = sorted(args.nd_epochs or ([5, 10] if quick else [5, 10, 20]))
    out = Path(args.out or ROOT / "docs" / ("replication_toy_quick.md" if quick else "replication_toy.md"))
    figures = out.parent / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    items = layout(choose_prompt_samples(args.prompts or (10 if quick else 40), args.samples), first_seeds,
                   args.later_seeds)
    models = Models(load_generator(args.model), load_verifier(GUIDE), [load_verifier(name) for name in JUDGES])
    rows = default_rows(args.baseline_epochs or (5 if quick else 10), nd_epochs)
    timing, runs, reused = searches(models, items, rows, nd_epochs, args)
    attention, attention_items, missing = attention_runs(models, items, runs, timing, args)
    rates = {m: timing[m]["rate"] for m in SEARCHES}
    runs_for = {r.label: runs["best_of_n" if r.method == "none" else r.method] for r in rows}
    table_rows, values, guide_values = equal_generations(runs_for, rows, items, args.resamples)
    attention_report = None
    if attention:
        compute = {r.label: search_compute(models.generator, models.guide, items.prompts[0], items.seeds[0], r,
                                           args.candidates) for r in rows}
        attention_report = attention_table(attention, attention_items, rows, values, guide_values, compute, rates,
                                           items.groups, items.held_mask, args.resamples)
        attention_report["seeds"] = list(args.attention_seeds or first_seeds)
    calib = calibration([models.guide, *models.judges], args.calibration)
    budgets = [(e + 1) * rates["noise_diffusion"] for e in nd_epochs]
    curves_figure(runs, rates, items.groups, budgets, figures / f"{out.stem}_curves.png", min(args.resamples, 2000))
    images_figure(runs, rows, items.prompts, items.keep, figures / f"{out.stem}.png")
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    given = sys.argv[1:] if argv is None else argv
    report = {
        "command": "OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/replicate_toy.py" + "".join(f" {a}" for a in given),
        "quick": quick, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        **spent(wall, cpu, timing, attention, missing, reused),
        "guide": GUIDE, "judges": list(JUDGES), "primary_judge": JUDGE, "seeds": items.sample_seeds,
        "samples": items.samples, "candidates": args.candidates, "resamples": args.resamples, "nd_epochs": nd_epochs,
        "timing": {"items": len(items.prompts[: args.timing_items]), "epochs": args.timing_epochs,
                   "rounds": args.timing_rounds, "seconds_per_generation": timing,
                   "main_run_epoch_seconds": {m: runs[m]["epoch_seconds"] for m in SEARCHES},
                   "main_run_seconds": {m: runs[m]["seconds"] for m in SEARCHES},
                   "main_run_epochs": {m: runs[m]["guide"].shape[1] - 1 for m in SEARCHES}},
        "rows": table_rows,
        "pairs": {j: pair_table(values[j], [r.label for r in rows], items.groups_by_sample, items.masks,
                                args.resamples) for j in JUDGES},
        "equal_seconds": equal_seconds(runs, rates, nd_epochs, items, args.resamples), "calibration": calib, "attention": attention_report, "raw_reused": reused,
        "run_now": [LABELS[m] for m in (*SEARCHES, *ATTENTION) if not reused and m in SEARCHES or m in missing],
    }
    out.write_text(with_kept_sections(render(report, figures.name, out.stem), out), encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}, {out.with_suffix('.json')} and figures/{out.stem}*.png ({wall / 60:.1f} min, "
          f"{cpu / 60:.1f} CPU-min)")
    return report


def attention_table(attention: dict, items: np.ndarray, rows: list[Row], values: dict, guide_values: dict,
                    compute: dict, rates: dict, groups: np.ndarray, held_mask: np.ndarray, resamples: int) -> dict:
    """The attention baselines and the equal-generations rows on the baselines' items: scores, compute per item, and
    each baseline against each row (and each other), paired by item, intervals over prompts."""
    g, held = groups[items], held_mask[items]
    table, scores = [], {judge: {} for judge in JUDGES}
    for row in rows:  # the searches' kept images on the same items
        method = "best_of_n" if row.method == "none" else row.method
        c = compute[row.label]
        entry = {"label": row.label, "generations": row.generations, "model_evals": c["model_evals"],
                 "model_backwards": c.get("model_backwards", 0), "cpu_seconds": row.generations * rates[method],
                 "guiding": mean_interval(guide_values[row.label][items], g, resamples=resamples)}
        table.append(entry)
    for method, run in attention.items():
        table.append({"label": LABELS[method], "generations": 1, "model_evals": float(run["model_evals"].mean()),
                      "model_backwards": float(run["model_backwards"].mean()), "cpu_seconds": float(run["cpu_per_item"]),
                      "wall_seconds": float(run["wall_per_item"]),
                      "guiding": mean_interval(run["guide"][:, 0], g, resamples=resamples)})
    for entry in table:
        for judge in JUDGES:
            run = next((r for m, r in attention.items() if LABELS[m] == entry["label"]), None)
            v = run[judge][:, 0] if run is not None else values[judge][entry["label"]][items]
            scores[judge][entry["label"]] = v
            entry[judge] = {"score": mean_interval(v, g, resamples=resamples),
                            "seen": float(v[~held].mean()), "held_out_combinations": float(v[held].mean())}
    pairs = {}
    for judge in JUDGES:
        pairs[judge] = []
        names = [LABELS[m] for m in attention]
        for i, a in enumerate(names):
            for b in names[i + 1:] + [r.label for r in rows]:
                result = compare(scores[judge][a], scores[judge][b], g, resamples=resamples).as_dict()
                pairs[judge].append({"a": a, "b": b, "pooled": result, "verdict": verdict(a, b, result)})
    return {"items": int(len(items)), "prompts": int(len(set(g))), "rows": table, "pairs": pairs}


if __name__ == "__main__":
    main_guard(lambda: main() and None)
