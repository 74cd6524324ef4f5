#!/usr/bin/env python
"""How far batching moves results: every (prompt, seed) optimised in batches of B against each one alone.

The loop treats batch items independently (own random generators, step size, selection, best image), but the models'
kernels (convolutions, matrix products) may sum in another order for another batch size. This script measures the
consequence on the toy world: the largest score difference at any epoch, the largest pixel difference of the best
images (in [0, 1]), how many saved 8-bit images differ, and whether every chosen candidate is the same.

    OMP_NUM_THREADS=1 python benchmarks/batch_invariance.py --prompts 8 --seeds 1 2 3 --batch_size 4 --max_epoch 5
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from noise_diffusion import api  # noqa: E402
from noise_diffusion.datasets import load_dataset  # noqa: E402
from noise_diffusion.optimize import SearchConfig, optimize  # noqa: E402
from noise_diffusion.images import tensor_to_pil  # noqa: E402


def compare(batched, alone) -> dict:
    """Differences between two lists of RunRecords of the same items."""
    differences = sorted(abs(a["score"] - b["score"]) for x, y in zip(batched, alone) for a, b in zip(x.epochs, y.epochs))
    score = differences[-1]
    pixel = max(float((x.best_image - y.best_image).abs().max()) for x, y in zip(batched, alone))
    png = sum(tensor_to_pil(x.best_image)[0].tobytes() != tensor_to_pil(y.best_image)[0].tobytes()
              for x, y in zip(batched, alone))
    same_choices = all([e.get("candidate") for e in x.epochs] == [e.get("candidate") for e in y.epochs]
                       and x.best_epoch == y.best_epoch for x, y in zip(batched, alone))
    return {"runs": len(batched), "scores": len(differences), "max_score_difference": score,
            "median_score_difference": differences[len(differences) // 2],
            "scores_differing_by_more_than_1e-5": sum(d > 1e-5 for d in differences), "max_pixel_difference": pixel,
            "best_images_differing_in_8_bit": png, "same_candidates_and_best_epochs": same_choices}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="toy-complex")
    parser.add_argument("--prompts", type=int, default=8, help="first N prompts of the dataset (default: 8)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--max_epoch", type=int, default=5)
    parser.add_argument("--num_candidate_noises", type=int, default=50)
    parser.add_argument("--num_denoising_steps", type=int, default=None, help="default: the toy world's 25")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    generator = api.build_generator("toy-digits", "cpu", "float32", num_steps=args.num_denoising_steps)
    verifier = api.build_verifier("toy-digits-cnn", "cpu", "float32")
    prompts = [e.prompt for e in load_dataset(args.dataset)[: args.prompts]]
    items = [(p, s) for p in prompts for s in args.seeds]
    search = SearchConfig(max_epoch=args.max_epoch, num_candidates=args.num_candidate_noises)
    batched = []
    for start in range(0, len(items), args.batch_size):
        chunk = items[start:start + args.batch_size]
        batched += optimize(generator, verifier, [p for p, _ in chunk], [s for _, s in chunk], search, progress=False)
    alone = [optimize(generator, verifier, [p], [s], search, progress=False)[0] for p, s in items]
    summary = {"batch_size": args.batch_size, "steps": generator.num_steps, **compare(batched, alone)}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
