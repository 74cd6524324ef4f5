"""Do half-precision models change Noise Diffusion's scores and decisions? fp32 vs float16/bfloat16, side by side.

    python benchmarks/precision.py --preset tiny --low_dtype bfloat16 --batch_size 4

From the same initial latents and prompts, one gradient epoch (generate, replay, decode, score, ∂s/∂z, select the
candidate) runs with the diffusion model and the verifier each in float32 or in ``--low_dtype``. Against the all-fp32
reference it reports the largest and mean score difference, the cosine between the gradients, and on how many items
the chosen candidate noise is the same — the decision the method actually makes. On a GPU use float16 / bfloat16 and
the real models (``--sd_version``, ``--vqa_model``); on a CPU bfloat16 is the practical check.
"""

from __future__ import annotations

import argparse

import torch

import common  # noqa: F401  (puts the project on sys.path)
from noise_diffusion.cli import ArgumentParser  # noqa: E402
from common import add_model_args, build_models, machine, prompts_for, user_error_exit, write_json
from epoch_cost import batch_items
from noise_diffusion.generators.base import initial_latents
from noise_diffusion.methods import METHODS
from noise_diffusion.optimize import POOL_SEED_OFFSET


def gradient_epoch(generator, verifier, prompts, seeds, num_candidates: int) -> dict:
    """Scores, gradient and chosen candidate of one Noise Diffusion epoch (the library's pieces, as ``optimize``)."""
    device = generator.device
    z = initial_latents(generator.latent_shape, seeds).to(device)
    sampled = generator.sample(z, generator.encode_prompts(prompts))
    leaf = z.detach().requires_grad_(True)
    scores = verifier(generator.decode(generator.replay(leaf, sampled.record)), prompts)
    (grad,) = torch.autograd.grad(scores.sum(), leaf)
    rngs = [torch.Generator(device=device).manual_seed(s + POOL_SEED_OFFSET) for s in seeds]
    _, infos = METHODS["noise_diffusion"].propose(z, grad.float(), scores.detach().float(), rngs,
                                                  {"num_candidates": num_candidates, "step_size": 0.1})
    return {"scores": scores.detach().float().cpu(), "grad": grad.float().cpu().flatten(1),
            "candidates": [i["candidate"] for i in infos]}


def main() -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(parser)
    parser.add_argument("--low_dtype", choices=("float16", "bfloat16"), default=None,
                        help="half precision to compare (default: float16 on a GPU, bfloat16 on the CPU)")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--num_candidate_noises", type=int, default=50)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    gen32, verifier32, models = build_models(argparse.Namespace(**{**vars(args), "dtype": "float32",
                                                                    "vqa_dtype": "float32"}))
    low = args.low_dtype or ("float16" if gen32.device.type == "cuda" else "bfloat16")
    gen16, verifier16, _ = build_models(argparse.Namespace(**{**vars(args), "dtype": low, "vqa_dtype": low}))
    prompts, seeds = batch_items(args.batch_size, prompts_for(verifier32))

    reference = gradient_epoch(gen32, verifier32, prompts, seeds, args.num_candidate_noises)
    rows = []
    for label, generator, verifier in (("generator " + low, gen16, verifier32), ("verifier " + low, gen32, verifier16),
                                     ("both " + low, gen16, verifier16)):
        got = gradient_epoch(generator, verifier, prompts, seeds, args.num_candidate_noises)
        diff = (got["scores"] - reference["scores"]).abs()
        cosine = torch.nn.functional.cosine_similarity(got["grad"], reference["grad"], dim=1)
        same = sum(a == b for a, b in zip(got["candidates"], reference["candidates"]))
        rows.append({"half": label, "max_abs_score_diff": diff.max().item(), "mean_abs_score_diff": diff.mean().item(),
                     "min_grad_cosine": cosine.min().item(), "same_candidate": same, "items": len(seeds)})

    print(f"**{models}** on {machine()}; batch {args.batch_size}, N = {args.num_candidate_noises}; reference: both "
          f"float32 (scores {', '.join(f'{s:.4f}' for s in reference['scores'].tolist())})\n")
    print("| in half precision | max abs score diff | mean abs score diff | min gradient cosine | same candidate |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['half']} | {r['max_abs_score_diff']:.2e} | {r['mean_abs_score_diff']:.2e} | "
              f"{r['min_grad_cosine']:.4f} | {r['same_candidate']}/{r['items']} |")
    if args.json:
        write_json(args.json, {"models": models, "machine": machine(), "rows": rows,
                               "reference_scores": reference["scores"].tolist()})
    return 0


if __name__ == "__main__":
    user_error_exit(main)
