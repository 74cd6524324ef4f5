#!/usr/bin/env python
"""Replicate the paper's claim in the toy world: Noise Diffusion vs the plain sampler, best-of-N and random diffusion.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/replicate_toy.py            # writes docs/replication_toy.md

Every method runs through the library's ``optimize()`` on the shipped ``toy-digits`` pipeline, guided by
``toy-digits-cnn``, with all (prompt, seed) items in one batch; methods with epochs get the same number of generations
(``--epochs`` + 1). The final (best) images are then judged by the held-out verifier ``toy-digits-heldout`` (another
architecture, trained on the other half of the digits), which the search never sees. Prompts: half held-out
combinations (digit pairs never shown together in training), half seen, over all five relations.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a clean clone without installing
    sys.path.insert(0, str(ROOT))

from noise_diffusion import SearchConfig, load_generator, load_verifier, optimize  # noqa: E402
from noise_diffusion.toy import world  # noqa: E402

METHODS = ("none", "best_of_n", "random_diffusion", "noise_diffusion")
LABELS = {"none": "plain sampler", "best_of_n": "best-of-N", "random_diffusion": "random diffusion",
          "noise_diffusion": "Noise Diffusion"}


def choose_prompts(count: int, seed: int = 0) -> list[str]:
    """``count`` prompts, half held-out and half seen combinations, relations in turn (deterministic)."""
    rng = np.random.default_rng(seed)
    every = [world.make_prompt(a, r, b) for r in world.RELATIONS for a in range(10) for b in range(10) if a != b]
    held = [p for p in every if world.is_held_out_prompt(p)]
    seen = [p for p in every if not world.is_held_out_prompt(p)]
    chosen = []
    for pool, n in ((held, count // 2), (seen, count - count // 2)):
        by_relation = {r: [p for p in pool if world.parse_prompt(p).relation == r] for r in world.RELATIONS}
        for r in by_relation:
            rng.shuffle(by_relation[r])
        for i in range(n):
            chosen.append(by_relation[world.RELATIONS[i % 5]][i // 5])
    return chosen


def run_method(generator, guide, judge, prompts, seeds, method: str, epochs: int, candidates: int) -> dict:
    config = SearchConfig(method=method, max_epoch=epochs, num_candidates=candidates)
    start = time.perf_counter()
    results = optimize(generator, guide, prompts, seeds, config, progress=False)
    seconds = time.perf_counter() - start
    images = torch.stack([r.best_image for r in results])
    with torch.no_grad():
        held = judge(images, prompts).cpu()
        faithful = judge.is_faithful(images, prompts)
    return {
        "method": method,
        "epochs": config.epochs,
        "generations": results[0].compute["generations"],
        "guiding": [r.best_score for r in results],
        "held_out": held.tolist(),
        "faithful": faithful.tolist(),
        "seconds": seconds,
        "images": images,
    }


def summary_rows(runs: list[dict], held_mask: np.ndarray) -> list[dict]:
    rows = []
    for run in runs:
        g, h, f = (np.asarray(run[k], dtype=float) for k in ("guiding", "held_out", "faithful"))
        rows.append({
            "method": run["label"], "generations": run["generations"], "guiding": g.mean(), "held_out": h.mean(),
            "accuracy": f.mean(), "seen_held_out": h[~held_mask].mean(), "unseen_held_out": h[held_mask].mean(),
            "seen_accuracy": f[~held_mask].mean(), "unseen_accuracy": f[held_mask].mean(), "seconds": run["seconds"],
        })
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| method | generations | guiding | held-out | held-out accuracy | held-out verifier: seen / held-out combinations "
        "| accuracy: seen / held-out combinations | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['generations']} | {r['guiding']:.2f} | {r['held_out']:.2f} | {r['accuracy']:.0%} "
            f"| {r['seen_held_out']:.2f} / {r['unseen_held_out']:.2f} | {r['seen_accuracy']:.0%} / "
            f"{r['unseen_accuracy']:.0%} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def figure(runs: list[dict], prompts: list[str], seeds: list[int], path: Path, columns: int = 8) -> None:
    """Rows: methods; columns: the first ``columns`` held-out-combination items of the first seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = [i for i, p in enumerate(prompts) if world.is_held_out_prompt(p) and seeds[i] == seeds[0]][:columns]
    fig, axes = plt.subplots(len(runs), len(items), figsize=(1.3 * len(items), 1.45 * len(runs)), squeeze=False)
    for row, run in enumerate(runs):
        for col, i in enumerate(items):
            ax = axes[row][col]
            ax.imshow(run["images"][i].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            colour = "green" if run["faithful"][i] else "red"
            ax.set_xlabel(f"{run['held_out'][i]:.2f}", fontsize=8, color=colour, labelpad=1)
            if row == 0:
                ax.set_title(prompts[i].removeprefix("a "), fontsize=7)
            if col == 0:
                ax.set_ylabel(run["label"], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, nargs="+", default=[10, 20],
                        help="epochs for the searches; the first is used for all methods, later ones for Noise Diffusion")
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--model", default="toy-digits", help="pipeline folder or name (default: the shipped one)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "replication_toy.md"))
    parser.add_argument("--figure", default=str(ROOT / "docs" / "figures" / "toy_replication.png"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    base = choose_prompts(args.prompts)
    prompts = [p for p in base for _ in args.seeds]
    seeds = [s for _ in base for s in args.seeds]
    held_mask = np.array([world.is_held_out_prompt(p) for p in prompts])
    generator = load_generator(args.model)
    guide, judge = load_verifier("toy-digits-cnn"), load_verifier("toy-digits-heldout")
    runs = []
    plan = [(m, args.epochs[0]) for m in METHODS] + [("noise_diffusion", e) for e in args.epochs[1:]]
    for method, epochs in plan:
        run = run_method(generator, guide, judge, prompts, seeds, method, epochs, args.candidates)
        run["label"] = LABELS[method] + (f", {epochs} epochs" if method == "noise_diffusion" else "")
        print(f"{run['label']}: guiding {np.mean(run['guiding']):.3f} held-out {np.mean(run['held_out']):.3f} "
              f"accuracy {np.mean(run['faithful']):.0%} ({run['seconds']:.0f} s)", flush=True)
        runs.append(run)
    rows = summary_rows(runs, held_mask)
    out, fig_path = Path(args.out), Path(args.figure)
    fig_path.parent.mkdir(parents=True, exist_ok=True)
    figure(runs[: len(METHODS)], prompts, seeds, fig_path)
    command = "OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/replicate_toy.py" + (
        f" {' '.join(argv)}" if argv else ""
    )
    report = render(rows, args, len(base), held_mask, command, fig_path.relative_to(out.parent) if fig_path.is_relative_to(out.parent) else fig_path)
    out.write_text(report, encoding="utf-8")
    (out.with_suffix(".json")).write_text(json.dumps(rows, indent=1, default=float) + "\n", encoding="utf-8")
    print(table(rows))
    print(f"wrote {out} and {fig_path}")


def render(rows, args, n_prompts, held_mask, command, fig_rel) -> str:
    return f"""# Replication in the toy world

Made by `{command}` ({time.strftime('%Y-%m-%d')}, torch {torch.__version__}, CPU, {torch.get_num_threads()} thread(s)).

{n_prompts} prompts x {len(args.seeds)} seeds = {len(held_mask)} items ({int(held_mask.sum())} of them held-out
combinations: digit pairs that never appear together in the generator's training canvases), every relation of the
world. Generator `toy-digits` (DDIM 25 steps, guidance 5); the searches are guided by `toy-digits-cnn` with
{args.candidates} candidate noises per Noise Diffusion epoch; the best image of each search (by the guiding score) is
then judged by `toy-digits-heldout`, which the search never sees. "Held-out accuracy" is the share of images in which the
held-out verifier's most likely class is the required digit in both boxes of some arrangement the prompt allows.
Methods with epochs all make the same number of generations (`generations` column), so the comparison is at equal
sampling cost; Noise Diffusion additionally back-propagates through the verifier and the VAE decoder once per epoch.
`seconds` is the wall time of the whole batch of {len(held_mask)} items on this machine (2 CPU cores shared with other
jobs, so only a rough guide).

{table(rows)}

![best images of the first held-out-combination items (seed {args.seeds[0]}); the number is the held-out verifier's score, green = judged faithful]({fig_rel})

Rows of the figure: plain sampler, best-of-N, random diffusion, Noise Diffusion ({args.epochs[0]} epochs).
See `docs/toy_world.md` for the world, the models and their training.
"""


if __name__ == "__main__":
    main()
