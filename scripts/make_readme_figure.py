#!/usr/bin/env python
"""Draw the README's figure: Noise Diffusion on the shipped toy world, epoch by epoch, for a few prompts.

Each row is one prompt and seed: the plain sampler's image (epoch 0), some later epochs, and the best image, each with
the guiding verifier's score; the title of the best image also gives the score of the held-out judge
(toy-digits-heldout-resnet). Runs on a CPU in about a minute:  python scripts/make_readme_figure.py [--out assets/toy_noise_diffusion.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS = ("a 3 left of a 7", "a 1 above a 8", "a 5 right of a 2", "a 9 below a 4")
SHOWN_EPOCHS = (0, 1, 2, 4, 7, 10)


def main(argv: list[str] | None = None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from noise_diffusion import SearchConfig, load_generator, load_verifier, optimize

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "assets" / "toy_noise_diffusion.png"), help="PNG to write")
    parser.add_argument("--seed", type=int, default=33, help="seed of every row (default: %(default)s)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    generator = load_generator("toy-digits")
    guide, judge = load_verifier("toy-digits-cnn"), load_verifier("toy-digits-heldout-resnet")
    search = SearchConfig(max_epoch=max(SHOWN_EPOCHS), num_candidates=50, keep_epoch_images=True)
    results = optimize(generator, guide, PROMPTS, [args.seed] * len(PROMPTS), search, progress=False)

    columns = len(SHOWN_EPOCHS) + 1
    figure, axes = plt.subplots(len(results), columns, figsize=(1.6 * columns, 2.05 * len(results)))
    for row, result in zip(axes, results):
        scores = [record["score"] for record in result.epochs]
        for axis, epoch in zip(row, SHOWN_EPOCHS):
            axis.imshow(result.epoch_images[epoch].permute(1, 2, 0).numpy(), interpolation="nearest")
            axis.set_title(f"epoch {epoch}: {scores[epoch]:.2f}", fontsize=8)
        held_out = float(judge(result.best_image[None], [result.prompt])[0])
        row[-1].imshow(result.best_image.permute(1, 2, 0).numpy(), interpolation="nearest")
        row[-1].set_title(f"best, ep {result.best_epoch}: {result.best_score:.2f}\njudge: {held_out:.2f}",
                          fontsize=8)
        row[0].set_ylabel(f'"{result.prompt}"', fontsize=8)
        for axis in row:
            axis.set_xticks([])
            axis.set_yticks([])
    figure.suptitle("Noise Diffusion on the toy world (toy-digits, guided by toy-digits-cnn)", fontsize=10)
    figure.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
