"""Memory and time of the exact gradient (``generator.exact``: back-propagation through every UNet call) against the
replay gradient (predictions held fixed), for SD1.4 at 512x512 with 50 DDIM steps and CFG 7.5, and for SD-Turbo at
512x512 with 1 Euler step and no guidance.

    python benchmarks/exact_gradient_cost.py --json exact_gradient_cost.json     # CPU: reduced, then scaled
    python benchmarks/exact_gradient_cost.py --device cuda:0 --full              # GPU: the real shapes, measured

Only the denoising chain is compared: the VAE decode and the verifier are differentiated once in both (at the final
latent), and cost what ``epoch_breakdown.py`` reports.

*Memory at the real shapes* is counted on PyTorch's ``meta`` device (shapes only, no arithmetic): the bytes autograd
saves for the backward pass during one network call of the real UNet (SD1.4's, SD-Turbo's SD 2.x UNet) at the real
latent size, with CFG's two rows for SD1.4. Then: replay keeps no UNet activations; exact without checkpointing keeps
every step's (steps x one call); exact with checkpointing keeps one input latent per step plus one call's activations,
recomputed during the backward. The self-attention matrices ([batch, heads, tokens, tokens]; recognised as square 4-D
tensors with fewer than 32 rows in dimension 1, since every feature map has at least GroupNorm's 32 channels) are what
PyTorch's math attention saves; flash / memory-efficient attention on a GPU keeps none of them, so both figures are
given. Weights are not included (SD1.4's UNet: 0.86 B parameters).

*Time* is measured on this machine with the library's own calls (``sample``; ``replay`` and its backward; ``exact`` and
its backward, with and without checkpointing) on a reduced UNet of the same architecture (``--width_divisor``: every
block's channels divided, heads kept at SD1.4's 8 and SD 2.x's 64-wide; ``--latent_size`` instead of 64; ``--num_steps``
instead of 50), then scaled to the real model: by the ratio of the floating-point operations of one network call at the
real and the reduced shapes (counted by ``torch.utils.flop_counter`` on the meta device) and by the number of steps
(every step costs the same). A CPU runs small convolutions at a lower rate than large ones, so the scaled seconds are
on the high side there; the ratio exact / replay is the robust figure. ``--full`` skips the reduction (a GPU).
"""

from __future__ import annotations

import argparse
import time

import torch

import common  # noqa: F401  (puts the project on sys.path)
from common import SD14_UNET, machine, materialize, publish, synchronize, user_error_exit, write_clip_tokenizer, _workdir
from noise_diffusion.generators import Sampling
from noise_diffusion.generators.base import initial_latents
from noise_diffusion.generators.stable_diffusion import StableDiffusionGenerator
from noise_diffusion.specs import resolve_device
from noise_diffusion.testing import tiny_clip_text_config
from noise_diffusion.testing.families import TURBO_SCHEDULERS

GIB = 2**30
#: SD-Turbo's UNet is SD 2.x's (cross-attention width 1024, heads of width 64, linear projections); the rest as SD1.4
SD_TURBO_UNET = {**SD14_UNET, "cross_attention_dim": 1024, "attention_head_dim": (5, 10, 20, 20),
                 "use_linear_projection": True}
#: model -> (UNet config, steps, guidance, scheduler choice, the scheduler config it is built from)
MODELS = {
    "sd14": (SD14_UNET, 50, 7.5, "ddim", None),
    "sd-turbo": (SD_TURBO_UNET, 1, 0.0, "default", TURBO_SCHEDULERS["sd-turbo"]),
}
VARIANTS = ("replay", "exact, checkpointed", "exact, not checkpointed")


def reduced_unet(config: dict, divisor: int, latent_size: int) -> dict:
    """The same architecture with every block's channels divided by ``divisor`` (heads of the same width as SD1.4's 8
    heads or SD 2.x's 64-wide ones allow; GroupNorm's 32 groups kept) and a smaller latent."""
    channels = tuple(max(32, c // divisor // 32 * 32) for c in config["block_out_channels"])
    if isinstance(config["attention_head_dim"], int):  # SD1.4: 8 heads
        heads = config["attention_head_dim"]
    else:  # SD 2.x: heads of width 64, at least one
        heads = tuple(max(1, c // 64) for c in channels)
    return {**config, "block_out_channels": channels, "attention_head_dim": heads, "sample_size": latent_size,
            "cross_attention_dim": max(64, config["cross_attention_dim"] // divisor // 32 * 32)}


def unet_call_cost(config: dict, rows: int) -> tuple[float, float, float]:
    """(FLOPs, bytes saved for backward, of which attention matrices) of one UNet call on ``rows`` latents, float32,
    counted on the meta device."""
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        unet = UNet2DConditionModel(**config).requires_grad_(False)
    side = config["sample_size"]
    x = torch.randn(rows, config["in_channels"], side, side, device="meta", requires_grad=True)
    text = torch.randn(rows, 77, config["cross_attention_dim"], device="meta")
    weights = {tuple(p.shape) for p in unet.parameters()}
    saved, attention = [0], [0]

    def pack(tensor):
        if tuple(tensor.shape) not in weights:
            size = tensor.numel() * tensor.element_size()
            saved[0] += size
            if tensor.dim() == 4 and tensor.shape[-1] == tensor.shape[-2] and tensor.shape[1] < 32:
                attention[0] += size
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        unet(x, torch.tensor(999.0), encoder_hidden_states=text)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        unet(x, torch.tensor(999.0), encoder_hidden_states=text)
    return float(counter.get_total_flops()), float(saved[0]), float(attention[0])


def memory_estimate(name: str, batch: int) -> dict:
    """GiB of denoiser activations kept for the backward, per variant, at the real shapes (float32 and 16-bit)."""
    config, steps, guidance, _, _ = MODELS[name]
    rows = batch * (2 if guidance > 1 else 1)
    flops, saved, attention = unet_call_cost(config, rows)
    side = config["sample_size"]
    latent = batch * config["in_channels"] * side * side * 4
    out = {"flops_per_call": flops, "steps": steps, "rows_per_call": rows}
    for label, per_call in (("math attention", saved), ("flash attention", saved - attention)):
        for dtype, scale in (("float32", 1.0), ("16-bit", 0.5)):
            out[f"{dtype}, {label}"] = {
                "replay": 0.0,
                "exact, checkpointed": (steps * latent + per_call) * scale / GIB,
                "exact, not checkpointed": steps * per_call * scale / GIB,
            }
    return out


def build_generator(name: str, unet_config: dict, steps: int, device, dtype) -> StableDiffusionGenerator:
    """A StableDiffusionGenerator around the given UNet (random weights), a tiny CLIP text encoder of the UNet's
    cross-attention width and a tiny 4-level VAE (never timed: the decode is the same for both gradients)."""
    from diffusers import AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from common import SD14_SCHEDULER

    _, _, guidance, choice, scheduler_config = MODELS[name]
    width = unet_config["cross_attention_dim"]
    text = CLIPTextConfig(**{**tiny_clip_text_config(width), "num_attention_heads": max(1, width // 64)})
    vae = dict(block_out_channels=(32,) * 4, down_block_types=("DownEncoderBlock2D",) * 4,
               up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, latent_channels=4)
    scheduler = (EulerDiscreteScheduler.from_config(scheduler_config) if scheduler_config
                 else DDIMScheduler(**{k: v for k, v in SD14_SCHEDULER.items() if k != "skip_prk_steps"},
                                    clip_sample=False))
    pipe = StableDiffusionPipeline(
        unet=materialize(lambda: UNet2DConditionModel(**unet_config), device, dtype, 0),
        vae=materialize(lambda: AutoencoderKL(**vae), device, dtype, 1),
        text_encoder=materialize(lambda: CLIPTextModel(text), device, dtype, 2),
        tokenizer=CLIPTokenizer.from_pretrained(write_clip_tokenizer(_workdir() / "clip_byte_tokenizer")),
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    side = unet_config["sample_size"] * 8
    sampling = Sampling(num_steps=steps, guidance_scale=guidance, scheduler=choice, height=side, width=side)
    return StableDiffusionGenerator(pipe, sampling, device=device, name=f"{name}-architecture")


def run_variant(generator, variant: str, z, conditioning) -> None:
    """One gradient of a fixed functional of the final latents with respect to z, as the variant computes it."""
    weights = torch.ones_like(z)
    if variant == "replay":
        sampled = generator.sample(z, conditioning)
        leaf = z.detach().requires_grad_(True)
        torch.autograd.grad(generator.replay(leaf, sampled.record), leaf, weights)
    else:
        exact_pass = generator.exact(z, conditioning, checkpointing=variant == "exact, checkpointed")
        exact_pass.gradients(weights)  # the exact gradient and the replay one beside it


def measure(generator, batch: int, repeats: int, skip: dict[str, float]) -> dict:
    """Seconds (median of ``repeats``, after one warm-up) and, on a GPU, peak GiB of each variant; a variant in
    ``skip`` (its estimated GiB) is not run."""
    device = generator.device
    conditioning = generator.encode_prompts(["a photograph of an astronaut riding a horse"] * batch)
    z = initial_latents(generator.latent_shape, range(batch)).to(device, generator.dtype)
    out = {}
    for variant in VARIANTS:
        if variant in skip:
            out[variant] = {"seconds": float("nan"), "skipped": f"estimated {skip[variant]:.0f} GiB"}
            continue
        run_variant(generator, variant, z, conditioning)
        times = []
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter() if device.type == "cuda" else time.process_time()
            run_variant(generator, variant, z, conditioning)
            synchronize(device)
            times.append((time.perf_counter() if device.type == "cuda" else time.process_time()) - start)
        out[variant] = {"seconds": sorted(times)[len(times) // 2]}
        if device.type == "cuda":
            out[variant]["peak_gib"] = torch.cuda.max_memory_allocated(device) / GIB
    return out


def too_large(memory: dict, args) -> dict[str, float]:
    """The variants whose estimated activations (flash attention, this precision) exceed 90 % of the GPU's memory."""
    if args.device.type != "cuda":
        return {}
    estimate = memory[f"{'float32' if args.dtype == torch.float32 else '16-bit'}, flash attention"]
    available = torch.cuda.get_device_properties(args.device).total_memory / GIB
    return {variant: gib for variant, gib in estimate.items() if gib > 0.9 * available}


def benchmark(name: str, args) -> dict:
    config, steps, _, _, _ = MODELS[name]
    memory = memory_estimate(name, args.batch_size)
    if args.full:
        measured_config, measured_steps = config, steps
    else:
        measured_config = reduced_unet(config, args.width_divisor, args.latent_size)
        measured_steps = min(steps, args.num_steps)
    rows = memory["rows_per_call"]
    flop_scale = memory["flops_per_call"] / unet_call_cost(measured_config, rows)[0]
    generator = build_generator(name, measured_config, measured_steps, args.device, args.dtype)
    measured = measure(generator, args.batch_size, args.repeats, too_large(memory, args) if args.full else {})
    scale = flop_scale * steps / measured_steps
    scaled = {variant: measured[variant]["seconds"] * scale for variant in VARIANTS}
    return {"model": name, "steps": steps, "memory": memory, "measured_unet": {
        k: measured_config[k] for k in ("block_out_channels", "attention_head_dim", "cross_attention_dim", "sample_size")},
        "measured_steps": measured_steps, "flop_scale": flop_scale, "measured": measured, "scaled_seconds": scaled}


def markdown(report: dict) -> str:
    lines = [f"**Exact vs replay gradient through the denoising chain** on {report['machine']}; {report['clock']}, "
             f"{report['dtype']}, batch {report['batch_size']}, {report['date']}.", ""]
    for result in report["results"]:
        memory, replay = result["memory"], result["scaled_seconds"]["replay"]
        lines += [f"**{result['model']}** ({result['steps']} step(s), {memory['rows_per_call']} UNet row(s) per call; "
                  f"measured with UNet {result['measured_unet']} at {result['measured_steps']} step(s), scaled "
                  f"x{result['flop_scale']:.1f} by FLOPs and x{result['steps'] / result['measured_steps']:g} by steps)",
                  "", "| gradient | measured s | s at the real shapes | / replay | " +
                  " | ".join(f"GiB, {k}" for k in memory if "," in k) + " |",
                  "|---|---:|---:|---:|" + "---:|" * sum("," in k for k in memory)]
        for variant in VARIANTS:
            seconds = result["scaled_seconds"][variant]
            gib = " | ".join(f"{memory[k][variant]:.2f}" for k in memory if "," in k)
            measured = result["measured"][variant]
            peak = f" peak {measured['peak_gib']:.1f} GiB measured |" if "peak_gib" in measured else ""
            lines.append(f"| {variant} | {measured['seconds']:.2f} | {seconds:.1f} | {seconds / replay:.2f} | {gib} |"
                         + (f" {measured['skipped']}: not run |" if "skipped" in measured else peak))
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=tuple(MODELS), default=list(MODELS))
    parser.add_argument("--batch_size", type=int, default=1, help="images per pass (default 1)")
    parser.add_argument("--width_divisor", type=int, default=5, help="UNet channels divided by this (default 5)")
    parser.add_argument("--latent_size", type=int, default=16, help="latent side measured (default 16; real: 64)")
    parser.add_argument("--num_steps", type=int, default=2, help="at most this many steps measured (default 2)")
    parser.add_argument("--full", action="store_true", help="measure the real shapes and steps (a GPU)")
    parser.add_argument("--repeats", type=int, default=1, help="timed repeats, median (default 1)")
    parser.add_argument("--device", default=None, help="device (default: cuda:0 when present, else cpu)")
    parser.add_argument("--dtype", default=None, choices=("float32", "float16"),
                        help="precision (default: float16 on a GPU, float32 on the CPU)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.device = resolve_device(args.device)
    args.dtype = getattr(torch, args.dtype or ("float16" if args.device.type == "cuda" else "float32"))
    report = {"machine": machine(), "batch_size": args.batch_size, "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                             time.gmtime()),
              "clock": "wall time" if args.device.type == "cuda" else "process CPU time",
              "dtype": str(args.dtype).removeprefix("torch."), "results": []}
    for name in args.models:
        report["results"].append(benchmark(name, args))
    return publish(report, markdown(report), args.json)


if __name__ == "__main__":
    user_error_exit(main)
