#!/usr/bin/env python
"""Exact against replay gradients, and zero-order search and ReNO against Noise Diffusion, in the toy world.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/noise_search_toy.py    # section of docs/replication_toy.md

Every search runs through ``optimize()`` on the shipped ``toy-digits`` pipeline guided by ``toy-digits-cnn``, all items
in one batch per method; every epoch's image is judged by the held-out ``toy-digits-heldout-resnet``, which the search
never sees. The prompts are the first held-out and seen prompts of the toy replication's first sample (the same rule as
``benchmarks/replicate_toy.py``: half held-out combinations, every relation in turn), with its seeds, judges and
statistics (paired by prompt, percentile bootstrap over prompts and a sign test, :mod:`noise_diffusion.intervals`).

A method's result after a budget is the image with the best guiding score among the generations that budget buys.
Budgets: generations (full sampling passes), forward-equivalents (denoiser evaluations, a denoiser backward counted as
two forwards, in units of one generation) and CPU seconds (the process's CPU time per generation, one thread,
measured in each run).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from noise_diffusion import SearchConfig, load_generator, load_verifier, optimize  # noqa: E402
from noise_diffusion.cli import ArgumentParser, main_guard, non_negative_int, positive_int  # noqa: E402
from noise_diffusion.intervals import compare, mean_interval  # noqa: E402
from replicate_toy import choose_prompt_samples  # noqa: E402
from replicate_toy_report import fmt_ci, fmt_mean, write_between_markers  # noqa: E402

GUIDE, JUDGE = "toy-digits-cnn", "toy-digits-heldout-resnet"
MARK_BEGIN, MARK_END = "<!-- noise-search-toy:begin -->", "<!-- noise-search-toy:end -->"
SIGNIFICANCE = 0.05


def run(generator, guide, judge, prompts, seeds, label: str, **config) -> dict:
    """One search: guiding and held-out scores of every epoch ``[items, epochs + 1]``, the generations and
    forward-equivalents spent after each epoch, its CPU seconds per generation, and its gradient agreement records."""
    search = SearchConfig(keep_epoch_images=True, **config)
    cpu = time.process_time()
    results = optimize(generator, guide, prompts, seeds, search, progress=False)
    cpu = time.process_time() - cpu
    images = torch.stack([torch.stack(r.epoch_images) for r in results])
    flat_prompts = [p for p in prompts for _ in range(images.shape[1])]
    with torch.no_grad():
        held = judge(images.flatten(0, 1), flat_prompts).view(len(results), -1).numpy().astype(float)
    per_epoch = search.candidates if search.method == "zero_order" else 1
    exact = search.gradient_used == "exact"
    epochs = np.arange(images.shape[1])
    generations = 1 + per_epoch * epochs
    forwards = generations + (2 * epochs if exact else 0)  # a backward through every denoiser call = 2 forwards
    compute = results[0].compute
    return {"label": label, "guide": np.array([[e.score for e in r.epochs] for r in results]), "held": held,
            "generations": generations, "forwards": forwards,
            "cpu_per_generation": cpu / (len(results) * compute.generations),
            "cpu_per_item": cpu / len(results), "compute": compute.to_json(),
            "cosine": [[e.info["gradient_cosine"] for e in r.epochs if "gradient_cosine" in e.info] for r in results],
            "norm_ratio": [[e.info["gradient_norm_ratio"] for e in r.epochs if "gradient_norm_ratio" in e.info]
                           for r in results]}


def kept(result: dict, budget: float, axis: str) -> tuple[np.ndarray, int] | None:
    """Held-out scores of the images kept within ``budget`` (of ``axis``: generations, forwards or cpu), and the
    generations used; None when the run cannot afford even its first image or was too short to fill the budget."""
    if axis == "cpu":
        cost = result["generations"] * result["cpu_per_generation"]
    else:
        cost = result[axis]
    affordable = np.flatnonzero(cost <= budget * (1 + 1e-9))
    if not len(affordable) and axis != "cpu":
        return None
    last = int(affordable[-1]) if len(affordable) else 0  # every method affords the plain sampler's image
    if last == len(cost) - 1 and len(cost) > 1 and 2 * cost[-1] - cost[-2] <= budget:
        return None  # the run ended before the budget did
    index = result["guide"][:, : last + 1].argmax(axis=1)
    return result["held"][np.arange(len(index)), index], int(result["generations"][last])


def comparisons(runs: dict, budget: float, axis: str, pairs: list[tuple[str, str]], groups) -> dict:
    """Every method's mean held-out score within the budget, and the paired differences of ``pairs``."""
    chosen = {name: kept(r, budget, axis) for name, r in runs.items()}
    rows = {name: {"generations": c[1], "score": mean_interval(c[0], groups)} for name, c in chosen.items() if c}
    out = []
    for a, b in pairs:
        if chosen.get(a) and chosen.get(b):
            result = compare(chosen[a][0], chosen[b][0], groups).as_dict()
            out.append({"a": a, "b": b, **result, "verdict": verdict(a, b, result)})
    return {"axis": axis, "budget": budget, "rows": rows, "pairs": out}


def verdict(a: str, b: str, result: dict) -> str:
    """As the toy replication: supported when the interval excludes 0 and the sign test gives p < 0.05."""
    if result["significant"] and result["sign_p"] < SIGNIFICANCE:
        return f"supported: {a} > {b}" if result["mean"] > 0 else f"supported: {b} > {a}"
    return "interval excludes 0, sign test does not" if result["significant"] else "not significant"


def cosine_summary(runs: dict, groups) -> dict:
    """The exact–replay cosine and norm ratio over every (item, epoch) of the exact runs: quantiles, per epoch, and
    the mean over prompts with its interval."""
    out = {}
    for name, r in runs.items():
        if not any(r["cosine"]):
            continue
        cos, ratio = np.array(r["cosine"]), np.array(r["norm_ratio"])
        quantiles = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
        out[name] = {"count": int(cos.size), "quantiles": dict(zip(map(str, quantiles), np.quantile(cos, quantiles))),
                     "ratio_quantiles": dict(zip(map(str, quantiles), np.quantile(ratio, quantiles))),
                     "per_epoch_median": np.median(cos, axis=0).tolist(),
                     "mean": mean_interval(cos.mean(axis=1), groups),
                     "share_below_0.5": float((cos < 0.5).mean())}
    return out


def measure(args) -> dict:
    """Run every search once (the shorter budgets are prefixes of the longer runs) and compare at every budget."""
    prompts = choose_prompt_samples(args.prompts, samples=1)[0]  # the toy replication's first sample
    items = [(p, s) for p in prompts for s in args.seeds]
    prompts, seeds = [p for p, _ in items], [s for _, s in items]
    groups = np.array(prompts)
    generator, guide, judge = load_generator(args.model), load_verifier(GUIDE), load_verifier(JUDGE)
    optimize(generator, guide, prompts[:2], seeds[:2], SearchConfig(method="none"), progress=False)  # warm-up
    e, n, long = args.epochs, args.neighbours, 3 * args.epochs + 1
    # long enough for the largest budget: 3e + 1 forward-equivalents, and the CPU seconds of e exact epochs
    plan = {"best-of-N": dict(method="best_of_n", max_epoch=long - 1),
            "Noise Diffusion (replay)": dict(method="noise_diffusion", max_epoch=args.replay_epochs),
            "Noise Diffusion (exact)": dict(method="noise_diffusion", gradient="exact", max_epoch=e),
            f"zero-order (N={n})": dict(method="zero_order", num_candidates=n, max_epoch=(long - 1) // n),
            "ReNO (exact)": dict(method="reno", max_epoch=e)}
    runs = {}
    for label, config in plan.items():
        tick = time.perf_counter()
        runs[label] = run(generator, guide, judge, prompts, seeds, label, **config)
        print(f"{label}: {time.perf_counter() - tick:.0f} s wall", flush=True)
    bon = runs["best-of-N"]
    runs = {"plain sampler": {**bon, "guide": bon["guide"][:, :1], "held": bon["held"][:, :1],
                              "generations": bon["generations"][:1], "forwards": bon["forwards"][:1]}, **runs}
    return {"runs": runs, "groups": groups, "prompts": prompts, "seeds": list(args.seeds), "plan": plan}


def budgets(runs: dict, groups, epochs: int, neighbours: int) -> list[dict]:
    zero = f"zero-order (N={neighbours})"
    base = ["plain sampler", "best-of-N", "Noise Diffusion (replay)"]
    pairs = [("Noise Diffusion (exact)", "Noise Diffusion (replay)")]
    pairs += [(m, b) for m in (zero, "ReNO (exact)") for b in base] + [("ReNO (exact)", zero)]
    gens = epochs + 1
    nd_exact, nd_replay = runs["Noise Diffusion (exact)"], runs["Noise Diffusion (replay)"]
    return [comparisons(runs, gens, "generations", pairs, groups),
            comparisons(runs, gens, "forwards", pairs, groups),
            comparisons(runs, 3 * epochs + 1, "forwards", pairs, groups),
            comparisons(runs, gens * nd_replay["cpu_per_generation"], "cpu", pairs[:1], groups),
            comparisons(runs, gens * nd_exact["cpu_per_generation"], "cpu", pairs[:1], groups)]


def render(report: dict) -> str:
    axis_names = {"generations": "generations", "forwards": "forward-equivalents", "cpu": "CPU seconds per item"}
    lines = [MARK_BEGIN, "## Exact gradients, zero-order search and ReNO", "", report["plan_text"], "",
             f"Made by `{report['command']}` ({report['date']}, torch {report['torch']}, {report['threads']} thread(s), "
             f"{report['wall_seconds'] / 60:.1f} min wall, {report['cpu_seconds'] / 60:.1f} CPU-min).", ""]
    lines += cosine_lines(report["cosines"], report["cpu"])
    for block in report["budgets"]:
        budget = block["budget"] if block["axis"] != "cpu" else f"{block['budget']:.2f}"
        lines += [f"### At {budget} {axis_names[block['axis']]}", "",
                  "| method | generations | held-out (ResNet) [95 % CI] |", "|---|---|---|"]
        for name, row in block["rows"].items():
            lines.append(f"| {name} | {row['generations']} | {fmt_mean(row['score'])} |")
        lines += ["", "| a | b | a − b [95 % CI] | prompts a > b / a < b | sign test p | verdict |",
                  "|---|---|---|---|---|---|"]
        for p in block["pairs"]:
            lines.append(f"| {p['a']} | {p['b']} | {fmt_ci(p)} | "
                         f"{p['positive']} / {p['negative']} | {p['sign_p']:.2g} | {p['verdict']} |")
        lines.append("")
    return "\n".join(lines + [MARK_END, ""])


def cosine_lines(cosines: dict, cpu: dict) -> list[str]:
    lines = ["### Exact against replay gradient", "",
             "Cosine between the exact and the replay gradient of the guiding score w.r.t. z_T, over every (item, "
             "epoch) with a gradient, and the norm ratio ‖exact‖/‖replay‖:", "",
             "| run | gradients | cosine min / 10 % / 25 % / median / 75 % / 90 % / max | mean over prompts [95 % CI] | "
             "share < 0.5 | norm ratio 10 % / median / 90 % |", "|---|---|---|---|---|---|"]
    for name, c in cosines.items():
        q, r, (m, lo, hi) = c["quantiles"], c["ratio_quantiles"], c["mean"]
        lines.append(f"| {name} | {c['count']} | {' / '.join(f'{v:.3f}' for v in q.values())} | "
                     f"{m:.3f} [{lo:.3f}, {hi:.3f}] | {c['share_below_0.5']:.1%} | "
                     f"{r['0.1']:.3f} / {r['0.5']:.3f} / {r['0.9']:.3f} |")
    lines.append("")
    for name, c in cosines.items():
        lines += [f"Median cosine per epoch ({name}): " + ", ".join(f"{v:.3f}" for v in c["per_epoch_median"]), ""]
    lines += ["CPU seconds per generation per item, measured in each run (one batch of all items): " +
              ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in cpu.items()) + ".", ""]
    return lines


PLAN = ("Plan (fixed before the run): {prompts} prompts of the replication's first sample (its first {half} "
        "held-out and first {rest} seen combinations, every relation in turn), seeds {seeds}; guided by `toy-digits-cnn`, judged by "
        "`toy-digits-heldout-resnet`. Noise Diffusion (50 candidates) with the replay and with the exact gradient, "
        "zero-order search with N = {n} neighbours at cosine 0.95 (tt-scale-flux's defaults), ReNO with its "
        "defaults and the exact gradient, best-of-N, and the plain sampler; {e} epochs for the gradient methods "
        "({g} generations), so zero-order gets {ze} epochs at equal generations. Budgets: {g} generations; {g} and "
        "{f} forward-equivalents (a denoiser backward = two forwards; an exact epoch costs 3, so {f} is what the "
        "exact runs spend in {e} epochs); the CPU seconds of {g} generations of Noise Diffusion with the replay and "
        "with the exact gradient. Verdicts as in the replication: supported when the 95 % interval excludes 0 and "
        "the sign test gives p < 0.05, no multiplicity correction. Sample size chosen so that the run fits in about "
        "20 minutes of wall time on a shared 2-core machine.")


def main(argv: list[str] | None = None) -> dict:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=positive_int, default=24, help="prompts (default: %(default)s)")
    parser.add_argument("--seeds", type=non_negative_int, nargs="+", default=[0], help="seeds of every prompt")
    parser.add_argument("--epochs", type=positive_int, default=8,
                        help="epochs of the gradient methods (default: %(default)s)")
    parser.add_argument("--neighbours", type=positive_int, default=4, help="zero-order neighbours N per epoch")
    parser.add_argument("--replay_epochs", type=positive_int, default=32,
                        help="epochs of the replay Noise Diffusion run, enough for the exact run's CPU seconds "
                             "(default: %(default)s)")
    parser.add_argument("--model", default="toy-digits", help="pipeline folder or name (default: the shipped one)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "replication_toy.md"),
                        help="markdown file whose section is written (replaced between its markers); the JSON goes "
                             "beside it as noise_search_toy.json (default: %(default)s)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    wall, cpu = time.perf_counter(), time.process_time()
    measured = measure(args)
    runs, groups = measured["runs"], measured["groups"]
    e, n = args.epochs, args.neighbours
    report = {"command": "python benchmarks/noise_search_toy.py" + "".join(f" {a}" for a in (argv or sys.argv[1:])),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
              "threads": torch.get_num_threads(),
              "plan_text": PLAN.format(prompts=args.prompts, half=args.prompts // 2, rest=args.prompts - args.prompts // 2, seeds=", ".join(map(str, args.seeds)), n=n, e=e,
                                       g=e + 1, ze=e // n, f=3 * e + 1),
              "cosines": cosine_summary(runs, groups), "budgets": budgets(runs, groups, e, n),
              "cpu": {k: r["cpu_per_generation"] for k, r in runs.items() if k != "plain sampler"},
              "compute": {k: r["compute"] for k, r in runs.items() if k != "plain sampler"}, "plan": measured["plan"],
              "wall_seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu}
    write(Path(args.out), report)
    return report


def write(out: Path, report: dict) -> None:
    """The section into ``out`` between its markers (appended when absent), the report as JSON beside it."""
    section = render(report)
    write_between_markers(out, section, MARK_BEGIN, MARK_END)
    (out.parent / "noise_search_toy.json").write_text(json.dumps(report, indent=1, default=_plain) + "\n")
    print(section)


def _plain(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(type(value).__name__)


if __name__ == "__main__":
    main_guard(lambda: main() and None)
