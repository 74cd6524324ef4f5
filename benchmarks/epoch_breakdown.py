"""Where one Noise Diffusion epoch's time goes at the real model shapes: SD1.4 (UNet, VAE) + CLIP-FlanT5-XL.

    python benchmarks/epoch_breakdown.py --json epoch_breakdown.json          # about 5 CPU minutes, 9 GiB
    python benchmarks/epoch_breakdown.py --quick                              # reduced further, about 1.5 CPU minutes

Every model is built from its published configuration with random weights (``random_weights.build_sd14``,
``random_weights.build_clip_flant5_verifier``; timings do not depend on the weights' values) and every part is timed
with the library's own pieces, at batch 1 and 4 by default:

- *sampling*: ``generator.sample`` (the guided sampler, classifier-free guidance: the UNet runs on 2B latents);
- *replay* and *replay backward*: ``generator.replay`` from z and the gradient back through it;
- *decode forward* and *decode backward*: ``generator.decode`` and the gradient from the images to the final latents;
- *verifier forward* and *verifier backward*: ``CLIPT5Verifier`` on the images and the gradient to the images.

What a small CPU cannot run at full size is reduced, and the output says so: the sampler runs ``--num_steps`` steps
(default 1) and sampling/replay are scaled to ``--paper_steps`` (50, the paper's; every step costs the same); the VAE
decodes ``--vae_size`` images (default 256) and is scaled by the pixel count to ``--size`` (convolutions cost in
proportion to pixels; its one attention layer at the lowest resolution is a small part); the verifier has the real
widths, image size (336, 577 image tokens) and prompt lengths, but ``--verifier_layers`` layers per stack (default 1
and 2, against the real 24): its cost is linear in depth, so the two depths give the per-layer cost and the cost at 24.
The UNet runs at the real size (``--size`` 512, 64×64 latents). Process CPU time on a CPU, wall time on a GPU.
"""

from __future__ import annotations

import gc

import torch

import common  # noqa: F401  (puts the project on sys.path)
from common import WALL, Clock, build_clip_flant5_verifier, build_sd14, clock_for, machine, timed, user_error_exit
from common import publish_batches
from epoch_cost import PROMPTS, batch_items
from noise_diffusion.specs import resolve_device
from noise_diffusion.cli import ArgumentParser
from noise_diffusion.generators.base import initial_latents

FULL_DEPTH = 24  # layers of CLIP ViT-L/14-336 and of FlanT5-XL/XXL's encoder and decoder
PARTS = ("sampling", "replay", "decode forward", "verifier forward", "verifier backward", "decode backward",
         "replay backward")


def time_generator(generator, batch: int, vae_size: int, repeats: int, clock: Clock = WALL) -> dict[str, float]:
    """Seconds per batch of the generator's parts at the measured settings."""
    device = generator.device
    prompts, seeds = batch_items(batch, PROMPTS)
    cond = generator.encode_prompts(prompts)
    z = initial_latents(generator.latent_shape, seeds).to(device)
    out: dict[str, float] = {}
    out["sampling"], sampled = timed(lambda: generator.sample(z, cond), device, repeats, warmup=0, clock=clock)
    leaf = z.detach().requires_grad_(True)
    out["replay"], final = timed(lambda: generator.replay(leaf, sampled.record), device, repeats, warmup=0, clock=clock)
    out["replay backward"], _ = timed(lambda: torch.autograd.grad(final, leaf, torch.ones_like(final),
                                                                  retain_graph=True), device, repeats, warmup=0,
                                      clock=clock)
    side = vae_size // 8
    small = torch.randn(batch, 4, side, side, generator=torch.Generator().manual_seed(1)).to(device, generator.dtype)
    small.requires_grad_(True)
    out["decode forward"], images = timed(lambda: generator.decode(small), device, repeats, warmup=0, clock=clock)
    grad = torch.ones_like(images)
    out["decode backward"], _ = timed(lambda: torch.autograd.grad(images, small, grad, retain_graph=True), device,
                                      repeats, warmup=0, clock=clock)
    return out


def time_verifier(size: str, layers: int, batch: int, image_size: int, device, dtype, repeats: int,
                  clock: Clock = WALL) -> dict:
    verifier = build_clip_flant5_verifier(size, device, dtype, layers=layers)
    prompts, _ = batch_items(batch, PROMPTS)
    images = torch.rand(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(2)).to(device)
    leaf = images.requires_grad_(True)
    forward, scores = timed(lambda: verifier(leaf, prompts), device, repeats, warmup=0, clock=clock)
    backward, _ = timed(lambda: torch.autograd.grad(scores.sum(), leaf, retain_graph=True), device, repeats,
                        warmup=0, clock=clock)
    del verifier, scores
    gc.collect()
    return {"verifier forward": forward, "verifier backward": backward}


def breakdown(args, generator, batch: int, device, clock: Clock = WALL) -> dict:
    steps_scale = args.paper_steps / args.num_steps
    vae_scale = (args.size / args.vae_size) ** 2
    measured = time_generator(generator, batch, args.vae_size, args.repeats, clock)
    d1, d2 = args.verifier_layers
    shallow = time_verifier(args.verifier, d1, batch, args.size, device, args.vqa_dtype, args.repeats, clock)
    deep = time_verifier(args.verifier, d2, batch, args.size, device, args.vqa_dtype, args.repeats, clock)
    full = {k: shallow[k] + (deep[k] - shallow[k]) * (FULL_DEPTH - d1) / (d2 - d1) for k in shallow}
    scaled = {
        "sampling": measured["sampling"] * steps_scale, "replay": measured["replay"] * steps_scale,
        "replay backward": measured["replay backward"] * steps_scale,
        "decode forward": measured["decode forward"] * vae_scale,
        "decode backward": measured["decode backward"] * vae_scale, **full,
    }
    return {"batch_size": batch, "measured": {**measured, **{f"{k} ({d1} layer(s))": v for k, v in shallow.items()},
                                              **{f"{k} ({d2} layers)": v for k, v in deep.items()}},
            "extrapolated": {k: scaled[k] for k in PARTS}, "epoch": sum(scaled.values())}


def markdown(report: dict) -> str:
    lines = [f"**{report['models']}** on {report['machine']}", "", report["reductions"], ""]
    batches = [r["batch_size"] for r in report["results"]]
    head = " | ".join(f"batch {b}: s per image | %" for b in batches)
    lines += [f"| part of the epoch (at full size) | {head} |", "|---|" + "---:|---:|" * len(batches)]
    for part in PARTS:
        cells = " | ".join(f"{r['extrapolated'][part] / r['batch_size']:.2f} | {100 * r['extrapolated'][part] / r['epoch']:.1f}"
                           for r in report["results"])
        lines.append(f"| {part} | {cells} |")
    cells = " | ".join(f"**{r['epoch'] / r['batch_size']:.1f}** | 100" for r in report["results"])
    lines.append(f"| **epoch** | {cells} |")
    lines += ["", "Measured (s per batch, before scaling):", ""]
    for r in report["results"]:
        lines.append(f"- batch {r['batch_size']}: " + ", ".join(f"{k} {v:.2f}" for k, v in r["measured"].items()))
    return "\n".join(lines)


def main() -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch_size", type=int, nargs="+", default=[1, 4], help="batch sizes (default 1 4)")
    parser.add_argument("--size", type=int, default=512, help="image size of SD1.4 (default 512, its own)")
    parser.add_argument("--num_steps", type=int, default=1, help="sampler steps actually run (default 1)")
    parser.add_argument("--paper_steps", type=int, default=50,
                        help="sampler steps the sampling/replay times are scaled to (default 50, the paper's)")
    parser.add_argument("--vae_size", type=int, default=256,
                        help="image size the VAE decode is timed at, scaled by pixels to --size (default 256)")
    parser.add_argument("--verifier", choices=("xl", "xxl"), default="xl", help="CLIP-FlanT5 widths (default xl)")
    parser.add_argument("--verifier_layers", type=int, nargs=2, default=[1, 2], metavar=("D1", "D2"),
                        help="the two verifier depths timed, layers per stack (default 1 2; real: 24)")
    parser.add_argument("--dtype", default="float32", choices=("auto", "float32", "float16", "bfloat16"),
                        help="SD1.4's precision (default float32)")
    parser.add_argument("--vqa_dtype", default="float32", choices=("auto", "float32", "float16", "bfloat16"),
                        help="the verifier's precision (default float32)")
    parser.add_argument("--repeats", type=int, default=1, help="timed repeats of each part, median (default 1)")
    parser.add_argument("--no_warmup", action="store_true",
                        help="skip the untimed batch-1 pass of every part before the timed ones (first calls pay "
                             "one-off set-up costs)")
    parser.add_argument("--quick", action="store_true",
                        help="reduced further: SD1.4 at 256×256 (32×32 latents), VAE at 128, batch 1 and 2")
    parser.add_argument("--device", default=None, help="device (default: cuda:0 when present, else cpu)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.quick:
        args.size, args.vae_size, args.batch_size = 256, 128, [1, 2]
    d1, d2 = args.verifier_layers
    if not 1 <= d1 < d2 or min(args.batch_size) < 1 or args.num_steps < 1 or args.size % 8 or args.vae_size % 8:
        parser.error("need 1 <= D1 < D2, batch sizes and --num_steps >= 1, sizes divisible by 8")
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    clock = clock_for("auto", device)
    dtype = {"auto": torch.float16 if device.type == "cuda" else torch.float32}.get(args.dtype) or getattr(torch, args.dtype)
    args.vqa_dtype = ({"auto": torch.bfloat16 if device.type == "cuda" else torch.float32}.get(args.vqa_dtype)
                      or getattr(torch, args.vqa_dtype))
    generator = build_sd14(device, dtype, num_steps=args.num_steps, height=args.size, width=args.size)
    reductions = (f"Reduced to run here, then scaled: {args.num_steps} of {args.paper_steps} DDIM steps "
                  f"(sampling and replay ×{args.paper_steps / args.num_steps:g}); VAE decode at {args.vae_size}×"
                  f"{args.vae_size} (×{(args.size / args.vae_size) ** 2:g} by pixels); verifier at {d1} and {d2} of "
                  f"{FULL_DEPTH} layers per stack (linear in depth). Scaled to: the UNet and VAE architectures, SD1.4 "
                  f"at {args.size}×{args.size}{' (--quick; its own size is 512×512)' if args.size != 512 else ''}, guidance 7.5 (the UNet on 2B latents), CLIP-FlanT5-{args.verifier.upper()} "
                  f"widths with 336×336 images and the real prompt lengths. SD1.4 {str(dtype).removeprefix('torch.')}, "
                  f"verifier {str(args.vqa_dtype).removeprefix('torch.')}; timed by {clock.name}, "
                  f"median of {args.repeats}.")
    report = {"models": f"SD1.4 architecture + CLIP-FlanT5-{args.verifier.upper()} shapes (random weights)",
              "machine": machine(), "reductions": reductions, "results": []}
    if not args.no_warmup:
        breakdown(args, generator, 1, device, clock)
    return publish_batches(report, args.batch_size, lambda batch: breakdown(args, generator, batch, device, clock),
                           lambda row: f"{row['epoch']:.1f} s at full size (extrapolated)", markdown, args.json)


if __name__ == "__main__":
    user_error_exit(main)
