"""Ours vs the authors' loop *structure*, on the same models, in one run.

    python benchmarks/reference_loop.py --preset tiny --batch_size 4 --epochs 4

The reference re-implements the structure of the authors' release loop (not their code): the diffusion model in float32,
one image at a time, the candidate noises drawn one by one on the CPU and moved to the device, a Python loop over the
candidates with a host synchronisation (``.item()``) for every alignment, and the image encoded to PNG every epoch (plus
the best one whenever it improves). It uses the same generator pieces (``sample`` / ``replay`` / ``decode``) and verifier
as ours, so only the loop structure differs. Ours is ``optimize()`` on the whole batch, in ``--dtype`` (float32 by
default; on a GPU try ``--dtype float16``).

Both are timed per epoch (median over the epochs that compute a gradient) and reported per image. The ratio
``reference / ours`` is the speed-up of our loop on this machine.
"""

from __future__ import annotations

import argparse
import io
import math
import statistics

import torch

import common  # noqa: F401  (puts the project on sys.path)
from noise_diffusion.cli import ArgumentParser  # noqa: E402
from common import (
    WALL, Clock, add_model_args, build_models, clock_for, machine, prompts_for, synchronize, user_error_exit, write_json,
)
from noise_diffusion import SearchConfig, optimize
from noise_diffusion.generators.base import initial_latents
from noise_diffusion.images import tensor_to_pil
from epoch_cost import batch_items


def reference_run(generator, verifier, prompt: str, seed: int, epochs: int, num_candidates: int,
                  clock: Clock = WALL) -> dict:
    """The authors' loop structure for one image; returns per-epoch seconds and the scores."""
    device = generator.device
    z = initial_latents(generator.latent_shape, [seed]).to(device)
    cond = generator.encode_prompts([prompt])
    cpu_rng = torch.Generator("cpu").manual_seed(seed)  # the authors used the unseeded global RNG
    best_score, seconds, scores = -1.0, [], []
    for epoch in range(epochs + 1):
        synchronize(device)
        tick = clock.now()
        sampled = generator.sample(z, cond)
        leaf = z.detach().clone().requires_grad_(True)
        image = generator.decode(generator.replay(leaf, sampled.record))
        score = verifier(image, [prompt])
        score.sum().backward()
        grad, s = leaf.grad, score.item()
        _png(image)  # the image of every epoch is written
        if s > best_score:
            best_score = s
            _png(image)  # and the best one
        if epoch < epochs:
            gamma = 1.0 - math.sqrt(max(s, 0.0))
            best_alignment, best_noise = -math.inf, None
            for _ in range(num_candidates):
                noise = torch.randn(z.shape, generator=cpu_rng).to(device)
                move = (math.sqrt(1.0 - gamma) - 1.0) * z + math.sqrt(gamma) * noise
                alignment = ((move * grad).sum() / (move * move).sum()).item()  # host sync per candidate
                if alignment > best_alignment:
                    best_alignment, best_noise = alignment, noise
            z = math.sqrt(1.0 - gamma) * z + math.sqrt(gamma) * best_noise
        synchronize(device)
        seconds.append(clock.now() - tick)
        scores.append(s)
    return {"seconds": seconds, "scores": scores}


def _png(image: torch.Tensor) -> int:
    buffer = io.BytesIO()
    tensor_to_pil(image.detach())[0].save(buffer, format="PNG")
    return buffer.tell()


def ours_run(generator, verifier, prompts, seeds, epochs: int, num_candidates: int, clock: Clock = WALL) -> list[float]:
    """Epoch intervals of ``optimize()`` on the whole batch (see ``epoch_cost.time_epochs``)."""
    device = generator.device
    ends: dict[int, float] = {}
    last = len(prompts) - 1

    def on_epoch(item, epoch, image, record):
        if item == last:
            synchronize(device)
            ends[epoch] = clock.now()

    config = SearchConfig(max_epoch=epochs, num_candidates=num_candidates)
    optimize(generator, verifier, prompts, seeds, config, progress=False, on_epoch=on_epoch)
    return [ends[e] - ends[e - 1] for e in range(1, epochs)]


def main() -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(parser)
    parser.add_argument("--batch_size", type=int, default=4, help="images optimised (ours: one batch; "
                                                                   "reference: one after another)")
    parser.add_argument("--num_candidate_noises", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (>= 2; default 4)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of ours and reference")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.epochs < 2 or args.batch_size < 1:
        parser.error("--epochs must be >= 2 and --batch_size >= 1")

    # the reference: a float32 diffusion model, as the authors
    reference_generator, verifier, models = build_models(argparse.Namespace(**{**vars(args), "dtype": "float32"}))
    if args.dtype in ("float32", "auto") and reference_generator.device.type == "cpu":
        generator = reference_generator
    else:
        generator, verifier, _ = build_models(args)
    clock = clock_for(args.clock, generator.device)
    prompts, seeds = batch_items(args.batch_size, prompts_for(verifier))

    ours, reference = [], []
    optimize(generator, verifier, prompts[:1], seeds[:1], SearchConfig(max_epoch=1, num_candidates=2), progress=False)
    for _ in range(args.rounds):  # alternate, so that both see the same machine load
        ours += [t / args.batch_size for t in ours_run(generator, verifier, prompts, seeds, args.epochs,
                                                        args.num_candidate_noises, clock)]
        for prompt, seed in zip(prompts, seeds):
            run = reference_run(reference_generator, verifier, prompt, seed, args.epochs, args.num_candidate_noises,
                                clock)
            reference += run["seconds"][1:-1]  # the epochs that propose and take a gradient, like ours
    ours_s, ref_s = statistics.median(ours), statistics.median(reference)
    settings = generator.settings()
    report = {
        "models": models, "machine": machine(), "batch_size": args.batch_size, "epochs": args.epochs,
        "num_candidates": args.num_candidate_noises, "ours_dtype": settings["dtype"], "num_steps": settings["num_steps"],
        "ours_seconds_per_image_per_epoch": ours_s, "reference_seconds_per_image_per_epoch": ref_s,
        "speedup": ref_s / ours_s, "ours_samples": ours, "reference_samples": reference,
    }
    print(f"**{models}** on {report['machine']}; {settings['num_steps']} steps, N = {args.num_candidate_noises}, "
          f"batch {args.batch_size}; timed by {clock.name}\n")
    print("| loop | dtype | s per image per epoch |\n|---|---|---:|")
    print(f"| reference structure (one image at a time, per-candidate sync, PNG every epoch) | float32 | {ref_s:.4f} |")
    print(f"| ours (`optimize()`, batch {args.batch_size}) | {settings['dtype']} | {ours_s:.4f} |")
    print(f"\nreference / ours = {ref_s / ours_s:.2f}x")
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    user_error_exit(main)
