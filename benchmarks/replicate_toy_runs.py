"""The measurements of the toy replication (``benchmarks/replicate_toy.py``): seconds per generation, the searches
and the attention baselines with every epoch's scores by the guide and the held-out judges, their cache file, and the
judges' calibration on rendered canvases; and the names of the methods and judges compared."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from noise_diffusion import SearchConfig, optimize
from noise_diffusion.toy import world

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
