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
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a clean clone without installing
    sys.path.insert(0, str(ROOT))

from noise_diffusion import SearchConfig, load_generator, load_verifier, optimize  # noqa: E402
from noise_diffusion.cli import ArgumentParser, main_guard, non_negative_int, positive_int  # noqa: E402
from noise_diffusion.errors import UserError  # noqa: E402
from noise_diffusion.intervals import compare, mean_interval  # noqa: E402
from noise_diffusion.toy import world  # noqa: E402

from common import machine  # noqa: E402

GUIDE = "toy-digits-cnn"
JUDGE = "toy-digits-heldout-resnet"  # primary held-out judge (the stronger one, see docs/toy_world.md)
JUDGES = (JUDGE, "toy-digits-heldout")
SHORT = {JUDGE: "ResNet", "toy-digits-heldout": "MLP", GUIDE: "guide"}
#: searched methods (``none`` is epoch 0 of any of them: every method starts from the same seeded latent)
SEARCHES = ("best_of_n", "random_diffusion", "gradient_ascent", "noise_diffusion")
LABELS = {"none": "plain sampler", "best_of_n": "best-of-N", "random_diffusion": "random diffusion",
          "gradient_ascent": "gradient ascent", "noise_diffusion": "Noise Diffusion"}
SIGNIFICANCE = 0.05
#: attention baselines: one image per item each, through the same ``optimize()`` (subject tokens found from the prompt)
ATTENTION = ("initno", "attend_and_excite")
LABELS.update(initno="InitNO", attend_and_excite="Attend-and-Excite")


@dataclass(frozen=True)
class Row:
    """One line of the equal-generations table: a method after ``epochs`` epochs (``epochs + 1`` generations)."""

    method: str
    epochs: int

    @property
    def label(self) -> str:
        if self.method == "noise_diffusion":
            return f"Noise Diffusion, {self.epochs} epochs"
        return LABELS[self.method]

    @property
    def generations(self) -> int:
        return self.epochs + 1


def default_rows(baseline_epochs: int, nd_epochs: list[int]) -> list[Row]:
    # InitNO and Attend-and-Excite are not rows of this list: they cover only part of the items and cost far more per
    # generation, so they get their own table (attention_section), paired with these rows on their items.
    return [Row("none", 0)] + [Row(m, baseline_epochs) for m in SEARCHES[:-1]] + [
        Row("noise_diffusion", e) for e in nd_epochs]


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


# -- timing ------------------------------------------------------------------------------------------------------------
def measure_seconds(generator, guide, prompts, seeds, epochs: int, rounds: int, candidates: int) -> dict:
    """Seconds per generation per item of each search, measured in interleaved rounds (order rotated each round).

    Both the process's CPU time and the wall time are taken. With one thread the CPU time is what the wall time would
    be on an idle machine, and it hardly moves with the load of other jobs, so ``rate`` (the one the equal-seconds
    comparison uses) is CPU seconds: the median within-round ratio to best-of-N times best-of-N's median."""
    cpu: dict[str, list[float]] = {m: [] for m in SEARCHES}
    wall: dict[str, list[float]] = {m: [] for m in SEARCHES}
    optimize(generator, guide, prompts, seeds, SearchConfig(method="none"), progress=False)  # warm-up
    for r in range(rounds):
        order = SEARCHES[r % len(SEARCHES):] + SEARCHES[: r % len(SEARCHES)]
        for method in order:
            config = SearchConfig(method=method, max_epoch=epochs, num_candidates=candidates)
            start, start_cpu = time.perf_counter(), time.process_time()
            optimize(generator, guide, prompts, seeds, config, progress=False)
            count = (epochs + 1) * len(prompts)
            cpu[method].append((time.process_time() - start_cpu) / count)
            wall[method].append((time.perf_counter() - start) / count)
    out = {}
    for m in SEARCHES:
        ratio = np.array(cpu[m]) / np.array(cpu["best_of_n"])  # within a round, so a change between rounds cancels
        wall_ratio = np.array(wall[m]) / np.array(wall["best_of_n"])
        out[m] = {"rate": float(np.median(ratio) * np.median(cpu["best_of_n"])),
                  "ratio_to_best_of_n": float(np.median(ratio)),
                  "ratio_min": float(ratio.min()), "ratio_max": float(ratio.max()),
                  "wall_rate": float(np.median(wall[m])), "wall_ratio_to_best_of_n": float(np.median(wall_ratio)),
                  "wall_ratio_min": float(wall_ratio.min()), "wall_ratio_max": float(wall_ratio.max()),
                  "cpu_rounds": cpu[m], "wall_rounds": wall[m]}
    return out


# -- the searches ------------------------------------------------------------------------------------------------------
def run_search(generator, guide, judges, prompts, seeds, method: str, epochs: int, candidates: int,
               keep: list[int]) -> dict:
    """Scores of every epoch's image: ``guide`` / each judge ``[items, epochs + 1]`` and faithful flags."""
    config = SearchConfig(method=method, max_epoch=epochs, num_candidates=candidates, keep_epoch_images=True)
    start = time.perf_counter()
    results = optimize(generator, guide, prompts, seeds, config, progress=True)
    seconds = time.perf_counter() - start
    out = {"method": method, "epochs": epochs, "seconds": seconds,
           "guide": np.array([[e["score"] for e in r.epochs] for r in results]),
           "epoch_seconds": float(np.median([e["seconds"] for r in results for e in r.epochs]))}
    images = torch.stack([torch.stack(r.epoch_images) for r in results])  # [items, epochs + 1, 3, H, W]
    flat = images.flatten(0, 1)
    flat_prompts = [p for p in prompts for _ in range(epochs + 1)]
    with torch.no_grad():
        for judge in judges:
            scores = torch.cat([judge(chunk, flat_prompts[i:i + len(chunk)]) for i, chunk in
                                zip(range(0, len(flat), 2048), flat.split(2048))])
            faithful = torch.cat([judge.is_faithful(chunk, flat_prompts[i:i + len(chunk)]) for i, chunk in
                                  zip(range(0, len(flat), 2048), flat.split(2048))])
            out[judge.name] = scores.view(len(results), -1).numpy().astype(float)
            out[judge.name + ":faithful"] = faithful.view(len(results), -1).numpy().astype(float)
    out["images"] = images[keep]
    return out


def best_index(guide: np.ndarray, generations: int) -> np.ndarray:
    """Per item, the epoch of the best guiding score among the first ``generations`` (the first one on ties)."""
    return guide[:, :generations].argmax(axis=1)


def at_generations(run: dict, key: str, generations: int) -> np.ndarray:
    """``key`` (a judge, its faithful flags, or ``guide``) of the image kept after ``generations`` generations."""
    generations = min(generations, run["guide"].shape[1])
    index = best_index(run["guide"], generations)
    return run[key][np.arange(len(index)), index]


def affordable(budget: float, rate: float, available: int) -> tuple[int, bool]:
    """Generations that ``budget`` seconds buy at ``rate`` seconds per generation (at least 1); and whether the run
    had fewer (so the method is shown at its last generation, in its disfavour)."""
    n = max(1, math.floor(budget / rate + 1e-9))
    return min(n, available), n > available


def run_attention(generator, guide, judges, prompts, seeds, items: np.ndarray, method: str) -> dict:
    """One image per item of ``items`` (indices into ``prompts``) by an attention baseline: guide / judge scores
    ``[len(items), 1]`` (the shape of a search's scores), and its compute per item (CPU and wall seconds, UNet
    forwards and backwards from the result's compute record)."""
    chosen_prompts, chosen_seeds = [prompts[i] for i in items], [seeds[i] for i in items]
    start, start_cpu = time.perf_counter(), time.process_time()
    results = optimize(generator, guide, chosen_prompts, chosen_seeds, SearchConfig(method=method), progress=True)
    out = {"method": method, "items": np.asarray(items), "seconds": time.perf_counter() - start,
           "cpu_per_item": (time.process_time() - start_cpu) / len(items),
           "wall_per_item": (time.perf_counter() - start) / len(items),
           "model_evals": np.array([r.compute["model_evals"] for r in results]),
           "model_backwards": np.array([r.compute["model_backwards"] for r in results]),
           "guide": np.array([[r.best_score] for r in results])}
    images = torch.stack([r.best_image for r in results])
    with torch.no_grad():
        for judge in judges:
            out[judge.name] = judge(images, chosen_prompts).numpy().astype(float)[:, None]
            out[judge.name + ":faithful"] = judge.is_faithful(images, chosen_prompts).numpy().astype(float)[:, None]
    return out


def search_compute(generator, guide, prompt: str, seed: int, row: Row, candidates: int) -> dict:
    """The compute record of one item of a search row (the counts do not depend on the item)."""
    method = "best_of_n" if row.method == "none" else row.method
    config = SearchConfig(method=method, max_epoch=row.epochs, num_candidates=candidates)
    return optimize(generator, guide, [prompt], [seed], config, progress=False)[0].compute


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
def fmt_ci(result: dict, digits: int = 3) -> str:
    return f"{result['mean']:+.{digits}f} [{result['low']:+.{digits}f}, {result['high']:+.{digits}f}]"


def fmt_mean(triple: tuple[float, float, float], digits: int = 3) -> str:
    return f"{triple[0]:.{digits}f} [{triple[1]:.{digits}f}, {triple[2]:.{digits}f}]"


def curves_figure(runs: dict, rates: dict, groups: np.ndarray, budgets: list[float], path: Path, resamples: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_gen, by_sec) = plt.subplots(1, 2, figsize=(11, 4.2))
    for method, run in runs.items():
        count = run["guide"].shape[1]
        xs = np.arange(1, count + 1)
        stats = np.array([mean_interval(at_generations(run, JUDGE, k), groups, resamples=resamples) for k in xs])
        for axis, x in ((by_gen, xs), (by_sec, xs * rates[method] * 1000)):
            line, = axis.plot(x, stats[:, 0], label=LABELS[method])
            axis.fill_between(x, stats[:, 1], stats[:, 2], color=line.get_color(), alpha=0.18, linewidth=0)
    for budget in budgets:
        by_sec.axvline(budget * 1000, color="grey", linestyle=":", linewidth=1)
    by_gen.set_xlabel("generations per item (1 = the plain sampler)")
    by_sec.set_xlabel("measured CPU milliseconds per item (dotted: Noise Diffusion's budgets)")
    for axis in (by_gen, by_sec):
        axis.set_ylabel(f"held-out score ({JUDGE})")
        axis.grid(alpha=0.3)
    by_gen.legend(fontsize=8, loc="lower right")
    fig.suptitle("mean held-out score of the kept image, 95 % bootstrap band over prompts", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def images_figure(runs: dict, rows: list[Row], prompts: list[str], keep: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r.method == "none" or r.method != "noise_diffusion" or r.epochs == rows[1].epochs]
    fig, axes = plt.subplots(len(shown), len(keep), figsize=(1.3 * len(keep), 1.45 * len(shown)), squeeze=False)
    for row_index, row in enumerate(shown):
        run = runs["best_of_n" if row.method == "none" else row.method]
        index = best_index(run["guide"][keep], row.generations)
        for col, item in enumerate(keep):
            ax = axes[row_index][col]
            ax.imshow(run["images"][col, index[col]].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            score = run[JUDGE][item, index[col]]
            faithful = run[JUDGE + ":faithful"][item, index[col]]
            ax.set_xlabel(f"{score:.2f}", fontsize=8, color="green" if faithful else "red", labelpad=1)
            if row_index == 0:
                ax.set_title(prompts[item].removeprefix("a "), fontsize=7)
            if col == 0:
                ax.set_ylabel(row.label.replace(", ", "\n"), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def calibration(judges, count: int, seed: int = 0) -> list[dict]:
    """Each judge on rendered canvases from the digit half it never saw: faithful, order swapped, a wrong digit."""
    rng = np.random.default_rng(seed)
    cases = {"faithful": [], "swapped": [], "wrong digit": []}
    while min(len(v) for v in cases.values()) < count:
        a, b = (int(x) for x in rng.choice(10, size=2, replace=False))
        relation = world.RELATIONS[rng.integers(5)]
        prompt = world.make_prompt(a, relation, b)
        options = world.parse_prompt(prompt).arrangements()
        layout, first, second = options[rng.integers(len(options))]
        wrong = int(rng.choice([d for d in range(10) if d not in (a, b)]))
        for kind, config in (("faithful", (layout, first, second)),
                             ("swapped", (layout, second, first) if relation != "and" else None),
                             ("wrong digit", (layout, first, wrong) if rng.random() < 0.5 else (layout, wrong, second))):
            if config is not None and len(cases[kind]) < count:
                cases[kind].append((prompt, config))
    cases["faithful, blurred"] = cases["faithful"]
    taps = torch.exp(-torch.arange(-2.0, 3.0) ** 2 / (2 * 0.8**2))
    kernel = (taps[:, None] * taps[None]) / taps.sum() ** 2
    rows = []
    for judge in judges:
        half = "b" if judge.name == GUIDE else "a"  # the guide trained on half a, the judges on half b
        row = {"verifier": judge.name, "digits": half}
        for kind, items in cases.items():
            canvases = torch.from_numpy(world.sample_canvases([c for _, c in items], np.random.default_rng(seed + 1), half=half))
            if kind == "faithful, blurred":  # softer strokes, as generated digits often have (Gaussian, sigma 0.8 px)
                canvases = torch.nn.functional.conv2d(canvases, kernel.expand(3, 1, 5, 5), padding=2, groups=3)
            prompts = [p for p, _ in items]
            with torch.no_grad():
                scores = judge(canvases, prompts)
            row[kind] = {"mean": scores.mean().item(), "above_0.5": (scores > 0.5).float().mean().item(),
                         "judged_faithful": judge.is_faithful(canvases, prompts).float().mean().item(),
                         "count": len(items)}
        rows.append(row)
    return rows


def calibration_table(rows: list[dict]) -> str:
    kinds = ("faithful", "faithful, blurred", "swapped", "wrong digit")
    lines = ["| verifier | digits | " + " | ".join(kinds) + " |", "|---|---|---|---|---|---|"]
    for r in rows:
        cells = [f"{r[k]['mean']:.3f} / {r[k]['above_0.5']:.1%} / {r[k]['judged_faithful']:.1%}" for k in kinds]
        lines.append(f"| `{r['verifier']}` | half {r['digits']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def measure_and_run(generator, guide, judges, prompts, seeds, rows, nd_epochs, keep, args) -> tuple[dict, dict]:
    """1. seconds per generation, interleaved; 2. every search, long enough for its equal-generations row and for the
    Noise Diffusion budgets of at most that many epochs (longer budgets only with ``--match_all_budgets``: the CPU
    budget of the default run does not allow them)."""
    wall, cpu = time.perf_counter(), time.process_time()
    timing = measure_seconds(generator, guide, prompts[: args.timing_items], seeds[: args.timing_items],
                             args.timing_epochs, args.timing_rounds, args.candidates)
    rates = {m: timing[m]["rate"] for m in SEARCHES}
    print("seconds per generation per item:", {m: f"{v * 1000:.1f} ms" for m, v in rates.items()}, flush=True)
    budgets = [(e + 1) * rates["noise_diffusion"] for e in nd_epochs]
    runs = {}
    for method in SEARCHES:
        need = max([r.epochs for r in rows if r.method == method] + [0])
        if method != "noise_diffusion":
            covered = [b for e, b in zip(nd_epochs, budgets) if args.match_all_budgets or e <= need] or budgets[:1]
            need = max(need, affordable(max(covered), rates[method], 10**6)[0] - 1)
        runs[method] = run_search(generator, guide, judges, prompts, seeds, method, need, args.candidates, keep)
        print(f"{LABELS[method]}: {need} epochs, {runs[method]['seconds']:.0f} s", flush=True)
    timing["clock"] = {"wall_seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu}
    return timing, runs


def save_raw(path: Path, timing: dict, runs: dict) -> None:
    """Every score array (and the kept images) as .npz, the timing as JSON inside it: no pickles."""
    arrays = {f"{m}/{k}": np.asarray(v) for m, run in runs.items() for k, v in run.items() if k != "method"}
    arrays["timing"] = np.array(json.dumps(timing))
    partial = path.with_name(path.stem + ".partial.npz")  # an interrupted write never replaces earlier scores
    np.savez_compressed(partial, **arrays)
    partial.replace(path)


def load_raw(path: Path) -> tuple[dict, dict]:
    with np.load(path, allow_pickle=False) as data:
        timing = json.loads(str(data["timing"]))
        runs: dict[str, dict] = {}
        for key in data.files:
            if key != "timing":
                method, name = key.split("/", 1)
                value = data[key]
                runs.setdefault(method, {"method": method})[name] = value.item() if value.ndim == 0 else value
    for run in runs.values():
        if "images" in run:  # the attention baselines keep no images
            run["images"] = torch.from_numpy(run["images"])
    return timing, {m: runs[m] for m in (*SEARCHES, *ATTENTION) if m in runs}


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
    out.write_text(render(report, figures.name, out.stem), encoding="utf-8")
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


def attention_section(rep: dict) -> list[str]:
    a = rep["attention"]
    judge, mlp = rep["judges"]
    lines = ["## Attention baselines", "",
             f"InitNO and Attend-and-Excite, run through the same `optimize()` (the digits' token positions found from "
             f"the prompt: the two digits, e.g. tokens 2 and 6 of \"a 3 left of a 6\"), each make one image per item "
             f"from the item's seeded latent. They cover **only {a['items']} items: the {a['prompts']} prompts of the "
             f"first sample with seeds {', '.join(map(str, a['seeds']))}**; every other row below is the "
             "same method as in the tables above, restricted to exactly these items, so all differences are paired. "
             "Their compute per item differs from a generation of the searches: UNet forwards (both halves of "
             "classifier-free guidance) and backwards through the UNet per item, and CPU seconds per item (the "
             "searches' from the measured rate above, the attention baselines' from their own run, one thread, "
             "measured at another time, under another load, so compare them roughly)."]
    plain = next((r for r in a["rows"] if r["label"] == LABELS["none"]), None)
    if plain:
        costs = [r for r in a["rows"] if r["label"] in (LABELS[m] for m in ATTENTION)]
        lines[-1] += (" In seconds one image of " + " and one of ".join(
            f"{r['label']} costs about {r['cpu_seconds'] / plain['cpu_seconds']:.0f} plain generations" for r in costs)
            + "; they are not in the equal-seconds comparisons, which would give the searches that many generations.")
    lines += ["",
             f"| method | generations | UNet forwards / item | UNet backwards / item | CPU s / item | guiding | "
             f"held-out ({SHORT[judge]}) [95 % CI] | {SHORT[judge]}: seen / held-out comb. | held-out ({SHORT[mlp]}) [95 % CI] |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in a["rows"]:
        j, m = r[judge], r[mlp]
        lines.append(f"| {r['label']} | {r['generations']} | {r['model_evals']:.0f} | {r['model_backwards']:.0f} | "
                     f"{r['cpu_seconds']:.2f} | {r['guiding'][0]:.3f} | {fmt_mean(j['score'])} | "
                     f"{j['seen']:.3f} / {j['held_out_combinations']:.3f} | {fmt_mean(m['score'])} |")
    lines += ["", f"Held-out score a − b on these items (paired by item, seeds averaged per prompt, bootstrap over "
              f"the {a['prompts']} prompts; one sample, so no replication within the run):", "",
              f"| a | b | {SHORT[judge]} [95 % CI] | prompts a > b / a < b | sign test p | verdict ({SHORT[judge]}) | "
              f"{SHORT[mlp]} [95 % CI] | verdict ({SHORT[mlp]}) |", "|---|---|---|---|---|---|---|---|"]
    for p, q in zip(a["pairs"][judge], a["pairs"][mlp]):
        c = p["pooled"]
        lines.append(f"| {p['a']} | {p['b']} | {fmt_ci(c)} | {c['positive']} / {c['negative']} | {c['sign_p']:.2g} | "
                     f"{p['verdict']} | {fmt_ci(q['pooled'])} | {q['verdict']} |")
    lines.append("")
    return lines


def both_samples_agree(pair: dict) -> bool:
    """Each sample's own interval excludes zero, on the same side as the pooled difference."""
    sign = np.sign(pair["pooled"]["mean"])
    return all(s["significant"] and np.sign(s["mean"]) == sign for s in pair["samples"])


def conclusions(rep: dict) -> list[str]:
    """The orderings the intervals support, and those they do not, in words (generated, not hand-written)."""
    judge = rep["primary_judge"]

    def describe(pairs: list[dict]) -> list[str]:
        supported = [p for p in pairs if p["verdict"].startswith("supported")]
        split = [p for p in pairs if not p["verdict"].startswith("supported") and p["pooled"]["significant"]]
        other = [p for p in pairs if not p["pooled"]["significant"]]
        out = []
        for p in supported:
            flip = p["pooled"]["mean"] < 0
            winner, loser = (p["b"], p["a"]) if flip else (p["a"], p["b"])
            c = p["pooled"]
            gap = {"mean": -c["mean"], "low": -c["high"], "high": -c["low"]} if flip else c
            agree = "in both samples on their own too" if both_samples_agree(p) else "not in each sample on its own"
            out.append(f"- **{winner} > {loser}**: {fmt_ci(gap)}, sign test p = {c['sign_p']:.2g} ({agree}).")
        if split:
            out.append("- Interval excludes zero but the sign test does not (not claimed): " + "; ".join(
                f"{p['a']} vs {p['b']} ({fmt_ci(p['pooled'])}, p = {p['pooled']['sign_p']:.2g})" for p in split) + ".")
        if other:
            out.append("- Not significant: " + "; ".join(f"{p['a']} vs {p['b']} ({fmt_ci(p['pooled'])})" for p in other)
                       + ".")
        return out

    lines = ["## Conclusions", "",
             f"Generated from the intervals above (held-out score, `{judge}`, pooled over both samples).", "",
             "At equal generations:", ""]
    lines += describe(rep["pairs"][judge])
    for block in rep["equal_seconds"]:
        lines += ["", f"At the seconds of Noise Diffusion with {block['nd_epochs']} epochs (ranking "
                  f"{' > '.join(block['ranking'])}):", ""]
        lines += describe(block["pairs"])
    hacked = [r["label"] for r in rep["rows"] if r[judge]["hacking"]["low"] > 0]
    lines += ["", "Verifier hacking (guide − held-out, interval above zero): "
              + (", ".join(hacked) if hacked else "none") + ".", ""]
    return lines


def render(rep: dict, figures: str, stem: str) -> str:
    lines = header(rep) + equal_generations_section(rep, figures, stem) + equal_seconds_section(rep)
    lines += conclusions(rep)
    if rep.get("attention"):
        lines += attention_section(rep)
    return "\n".join(lines + closing_sections(rep, figures, stem))


def header(rep: dict) -> list[str]:
    """The title, how the report was made (the machine it measured, read when it ran) and the statistics."""
    judge, mlp = rep["judges"]
    n_items = sum(len(s) * len(ss) for s, ss in zip(rep["samples"], rep["seeds"]))
    sizes = " and ".join(f"{len(s)} prompts x seeds {', '.join(map(str, ss))}" for s, ss in zip(rep["samples"], rep["seeds"]))
    title = "Replication in the toy world" + (" — QUICK RUN (small sample, not the full replication)" if rep["quick"] else "")
    lines = [f"# {title}", "",
             f"Made by `{rep['command']}` ({rep['date']}, {rep['machine']}; "
             f"{rep['wall_seconds'] / 60:.1f} min wall, {rep['cpu_seconds'] / 60:.1f} CPU-min" +
             (f"; scores read from the `--raw` file of an earlier run with the same settings"
              + (f", {', '.join(rep['run_now'])} run now" if rep.get("run_now") else "")
              + ", times summed over both" if rep.get("raw_reused") else "") + ").", "",
             f"{len(rep['samples'])} disjoint prompt samples, {sizes} = {n_items} items (half of the prompts of each "
             f"sample are held-out combinations, digit pairs never drawn together in the generator's training "
             f"canvases; every relation in turn). Guided by `{rep['guide']}` "
             f"({rep['candidates']} candidate noises per Noise Diffusion epoch); every image is judged by `{judge}` "
             f"(**primary**; a residual CNN trained with augmentation on the other half of the digits) and by `{mlp}` "
             f"(the MLP), which the search never sees. A method's result after k generations is the image with the best "
             f"guiding score among its first k. The plain sampler is generation 1 of every search (same seeded latent); "
             f"the 5- and 10-epoch Noise Diffusion rows are the first epochs of the longest run (the loop's randomness "
             f"does not depend on the epoch budget).", "",
             "**Statistics.** Every difference is paired by (prompt, seed); the seeds of a prompt are averaged first, "
             f"and the 95 % interval is a percentile bootstrap over prompts ({rep['resamples']:,} resamples). The sign "
             "test counts prompts whose mean difference is positive (two-sided, exact, ties left out). An ordering is "
             f"called **supported** when the pooled interval (both samples, {sum(len(x) for x in rep['samples'])} "
             "prompts) excludes zero *and* the sign test gives p < 0.05; otherwise **not significant**. The two "
             "samples' own differences are shown beside it, as the replication within the run. With many pairs, a few "
             "borderline 'supported' verdicts can be chance (no multiplicity correction).", "",
    ]
    return lines


def equal_generations_section(rep: dict, figures: str, stem: str) -> list[str]:
    judge, mlp = rep["judges"]
    lines = ["## Equal generations", "",
             f"| method | generations | guiding | held-out ({SHORT[judge]}) [95 % CI] | accuracy ({SHORT[judge]}) | "
             f"held-out ({SHORT[mlp]}) | accuracy ({SHORT[mlp]}) | {SHORT[judge]}: seen / held-out comb. | "
             f"{SHORT[judge]}: sample 1 / sample 2 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rep["rows"]:
        j, m = r[judge], r[mlp]
        lines.append(f"| {r['label']} | {r['generations']} | {r['guiding'][0]:.3f} | {fmt_mean(j['score'])} | "
                     f"{j['accuracy'][0]:.1%} | {m['score'][0]:.3f} | {m['accuracy'][0]:.1%} | "
                     f"{j['seen']:.3f} / {j['held_out_combinations']:.3f} | "
                     f"{' / '.join(f'{x:.3f}' for x in j['per_sample'])} |")
    lines += ["", f"![held-out score vs generations and vs seconds]({figures}/{stem}_curves.png)", "",
              f"### Every pair, held-out score ({SHORT[judge]}), a − b", "",
              "| a | b | sample 1 | sample 2 | pooled [95 % CI] | prompts a > b / a < b | sign test p | "
              f"pooled with {SHORT[mlp]} | verdict ({SHORT[judge]}) |", "|---|---|---|---|---|---|---|---|---|"]
    mlp_pairs = {(p["a"], p["b"]): p for p in rep["pairs"][mlp]}
    for p in rep["pairs"][judge]:
        pooled = p["pooled"]
        lines.append(f"| {p['a']} | {p['b']} | {' | '.join(fmt_ci(s) for s in p['samples'])} | {fmt_ci(pooled)} | "
                     f"{pooled['positive']} / {pooled['negative']} | {pooled['sign_p']:.2g} | "
                     f"{fmt_ci(mlp_pairs[p['a'], p['b']]['pooled'])} | {p['verdict']} |")
    return lines


def equal_seconds_section(rep: dict) -> list[str]:
    t = rep["timing"]
    rates = {m: t["seconds_per_generation"][m] for m in SEARCHES}
    judge = rep["judges"][0]
    lines = ["", "## Equal seconds", "",
              f"Seconds per generation per item, measured first in {t['rounds']} interleaved rounds of {t['epochs'] + 1} "
              f"generations on {t['items']} items (order rotated each round, so the machine's load affects all methods "
              "alike). The equal-seconds comparison uses the process's **CPU time** (one thread: the wall time an idle "
              "machine would take; wall time under load is far noisier): " +
              ", ".join(f"{LABELS[m]} {v['rate'] * 1000:.1f} ms ({v['ratio_to_best_of_n']:.2f}x best-of-N; rounds "
                        f"{v['ratio_min']:.2f}–{v['ratio_max']:.2f}x)" for m, v in rates.items()) +
              ". Wall time in the same rounds: " +
              ", ".join(f"{LABELS[m]} {v['wall_rate'] * 1000:.1f} ms ({v['wall_ratio_to_best_of_n']:.2f}x; rounds "
                        f"{v['wall_ratio_min']:.2f}–{v['wall_ratio_max']:.2f}x)" for m, v in rates.items()) +
              ". In the main runs (one batch of all items per method, not interleaved) the median epoch took, in wall time, " +
              ", ".join(f"{LABELS[m]} {t['main_run_epoch_seconds'][m] * 1000:.1f} ms" for m in SEARCHES) +
              " per item. Noise Diffusion and gradient ascent also back-propagate through the guide, the VAE decoder "
              "and the scheduler's steps every epoch, with the UNet's predictions held fixed (no backward pass through "
              "the UNet), which is why their extra cost is small next to 25 guided UNet steps. Each budget below is the time of Noise Diffusion at k epochs; the "
              "other searches get the generations it buys at their own rate (the ratio to best-of-N is measured within "
              "rounds, so the machine's changing load cancels out of it).", ""]
    unmatched = [e for e in rep["nd_epochs"] if e not in {b["nd_epochs"] for b in rep["equal_seconds"]}]
    if unmatched:
        lines += [f"Noise Diffusion at {', '.join(map(str, unmatched))} epochs is compared at equal generations only: "
                  "the baselines were not run long enough to match its seconds (`--match_all_budgets` does).", ""]
    for block in rep["equal_seconds"]:
        lines += [f"### Budget of Noise Diffusion at {block['nd_epochs']} epochs "
                  f"({block['budget_ms_per_item']:.0f} ms per item)", "",
                  f"| rank | method | generations | held-out ({SHORT[judge]}) [95 % CI] | guiding |", "|---|---|---|---|---|"]
        for rank, name in enumerate(block["ranking"], 1):
            m = block["methods"][name]
            lines.append(f"| {rank} | {name} | {m['generations']} | {fmt_mean(m['score'])} | {m['guiding']:.3f} |")
        if block.get("not_run"):
            lines += ["", f"Not run long enough for this budget: {', '.join(block['not_run'])}."]
        lines += ["", "| a | b | sample 1 | sample 2 | pooled [95 % CI] | sign test p | verdict |",
                  "|---|---|---|---|---|---|---|"]
        for p in block["pairs"]:
            lines.append(f"| {p['a']} | {p['b']} | {' | '.join(fmt_ci(s) for s in p['samples'])} | "
                         f"{fmt_ci(p['pooled'])} | {p['pooled']['sign_p']:.2g} | {p['verdict']} |")
        lines.append("")
    return lines


def closing_sections(rep: dict, figures: str, stem: str) -> list[str]:
    """Verifier hacking and the judges on rendered canvases."""
    judge, mlp = rep["judges"]
    lines = ["## Verifier hacking", "",
              "Guiding score minus held-out score of the same kept images, mean over prompts with its 95 % interval "
              "(the verifiers are all digit classifiers scoring the same probability, so the scales are comparable; "
              "the guide also scores images drawn from the same digits, so part of the gap would exist without search).",
              "", f"| method | generations | guide − {SHORT[judge]} | guide − {SHORT[mlp]} |", "|---|---|---|---|"]
    for r in rep["rows"]:
        lines.append(f"| {r['label']} | {r['generations']} | {fmt_ci(r[judge]['hacking'])} | {fmt_ci(r[mlp]['hacking'])} |")
    lines += ["", "## Judges on rendered canvases", "",
              "Each verifier on canvases drawn from the specification with the digit images it never saw in training "
              f"({rep['calibration'][0]['faithful']['count']} per case): a faithful scene, the order swapped (spatial "
              "prompts), one digit replaced by a third, and the faithful canvases blurred (Gaussian, sigma 0.8 px). Cells: mean "
              "score / share above 0.5 / share judged faithful.", "",
              calibration_table(rep["calibration"]), "",
              "![best images of the first held-out-combination items (first seed); the number is the primary judge's "
              f"score, green = judged faithful]({figures}/{stem}.png)", "",
              "See `docs/toy_world.md` for the world, the models and their training.", ""]
    return lines


if __name__ == "__main__":
    main_guard(lambda: main() and None)
