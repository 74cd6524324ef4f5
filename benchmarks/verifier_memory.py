"""What the verifier's memory options save in its backward pass: activation checkpointing and micro-batches, measured
on the CPU as peak resident memory, on CLIP-FlanT5 of the real widths at reduced depth, extrapolated to full depth.

    python benchmarks/verifier_memory.py --json verifier_memory.json
    python benchmarks/verifier_memory.py --batch_size 4 --layers 1 2 --size xl     # the defaults but batch 4

Each configuration runs in its own subprocess: the verifier is built (CLIP ViT-L/14-336 tower and FlanT5-XL/XXL widths,
``--layers`` layers in each of the vision tower, T5 encoder and T5 decoder instead of 24; random weights), the
process's peak RSS is reset (``/proc/self/clear_refs``), one forward and one backward to the 512×512 input images run,
and the rise of the peak RSS over the RSS before the pass is the pass's memory (activations kept for the backward plus
transients; large allocations go straight back to the system, ``MALLOC_MMAP_THRESHOLD_``). Activation memory is
linear in depth, so two depths give a per-layer term and the value at the real 24 layers per stack. Linux only.
Float32 on the CPU; in bfloat16 on a GPU the activations take about half as much.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import torch

import common  # noqa: F401  (puts the project on sys.path)
from common import build_clip_flant5_verifier, count_parameters, machine, publish, user_error_exit
from epoch_cost import PROMPTS, batch_items
from noise_diffusion.cli import ArgumentParser

GIB = 2**30
FULL_DEPTH = 24
#: --modes name -> verifier options (micro-batches of one image: the least memory that option gives)
MODES = {"plain": {}, "checkpointing": {"checkpointing": True}, "micro_batch": {"micro_batch": 1},
         "both": {"checkpointing": True, "micro_batch": 1}}


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(size: str, layers: int, batch: int, mode: str) -> dict:
    """One configuration, in this (fresh) process: peak RSS rise of one forward + backward."""
    torch.set_num_threads(1)
    verifier = build_clip_flant5_verifier(size, "cpu", torch.float32, layers=layers, **MODES[mode])
    prompts, _ = batch_items(batch, PROMPTS)
    images = torch.rand(batch, 3, 512, 512, generator=torch.Generator().manual_seed(0), requires_grad=True)
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
        handle.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    start = time.process_time()
    (grad,) = torch.autograd.grad(verifier(images, prompts).sum(), images)
    seconds = time.process_time() - start
    assert torch.isfinite(grad).all()
    return {"pass_gib": (_status_kib("VmHWM") - before) / 2**20, "seconds": seconds,
            "weights_gib": sum(p.numel() * p.element_size() for p in verifier.parameters()) / GIB}


def run_child(size: str, layers: int, batch: int, mode: str) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--child", json.dumps([size, layers, batch, mode])]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{mode}, {layers} layer(s) failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _meta_verifier(size: str):
    from transformers import CLIPVisionConfig, CLIPVisionModel, T5Config

    from common import CLIP_L336_VISION, FLAN_T5
    from noise_diffusion.verifiers.vqa.clip_t5 import CLIPT5

    t5 = T5Config(**FLAN_T5[size], mm_projector_type="mlp2x_gelu")
    return CLIPT5(t5, CLIPVisionModel(CLIPVisionConfig(**CLIP_L336_VISION)))


def extrapolate(small: float, large: float, d_small: int, d_large: int, depth: int = FULL_DEPTH) -> float:
    return small + (large - small) * (depth - d_small) / (d_large - d_small)


def markdown(report: dict) -> str:
    d1, d2 = report["layers"]
    lines = [f"**CLIP-FlanT5-{report['size'].upper()} widths** on {report['machine']}; batch {report['batch_size']}, "
             f"512×512 images, float32; peak-RSS rise of one forward + backward (CPU seconds in brackets)", "",
             f"| option | {d1} layer(s) GiB | {d2} layers GiB | per layer GiB | at {FULL_DEPTH} layers GiB (extrapolated) "
             f"| vs plain |", "|---|---:|---:|---:|---:|---:|"]
    plain = report["results"]["plain"]["full_gib"]
    for mode, row in report["results"].items():
        a, b = row["by_depth"]
        label = {"micro_batch": "micro_batch=1", "both": "checkpointing + micro_batch=1"}.get(mode, mode)
        lines.append(f"| {label} | {a['pass_gib']:.3f} ({a['seconds']:.1f} s) | {b['pass_gib']:.3f} ({b['seconds']:.1f} s) "
                     f"| {row['per_layer_gib']:.3f} | {row['full_gib']:.2f} | {row['full_gib'] / plain:.2f}× |")
    lines += ["", f"Weights: {report['weights_gib_measured']:.2f} GiB at {d2} layers; the full model has "
              f"{report['full_parameters'] / 1e9:.2f} B parameters ({report['full_parameters'] * 4 / GIB:.1f} GiB in "
              f"float32, {report['full_parameters'] * 2 / GIB:.1f} GiB in bfloat16)."]
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child(*json.loads(sys.argv[2]))))
        return 0
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("xl", "xxl"), default="xl", help="FlanT5 widths (default xl)")
    parser.add_argument("--layers", type=int, nargs=2, default=[1, 2], metavar=("D1", "D2"),
                        help="the two depths measured, layers per stack (default 1 2; real: 24)")
    parser.add_argument("--batch_size", type=int, default=2, help="images per pass (default 2)")
    parser.add_argument("--modes", nargs="+", choices=tuple(MODES), default=list(MODES),
                        help="options to measure: plain, checkpointing, micro_batch (of 1 image), both (default: all)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    d1, d2 = args.layers
    if not 1 <= d1 < d2 or args.batch_size < 1:
        parser.error("--layers needs 1 <= D1 < D2 and --batch_size >= 1")
    if "plain" not in args.modes:
        args.modes = ["plain", *args.modes]
    results = {}
    for mode in args.modes:
        by_depth = [run_child(args.size, d, args.batch_size, mode) for d in (d1, d2)]
        per_layer = (by_depth[1]["pass_gib"] - by_depth[0]["pass_gib"]) / (d2 - d1)
        full = extrapolate(by_depth[0]["pass_gib"], by_depth[1]["pass_gib"], d1, d2)
        results[mode] = {"by_depth": by_depth, "per_layer_gib": per_layer, "full_gib": full,
                         "full_seconds": extrapolate(by_depth[0]["seconds"], by_depth[1]["seconds"], d1, d2)}
        print(f"{mode}: {[round(r['pass_gib'], 3) for r in by_depth]} GiB at {args.layers} layers, "
              f"{full:.2f} GiB at {FULL_DEPTH}", flush=True)
    with torch.device("meta"):
        n_full = count_parameters(_meta_verifier(args.size))
    report = {"size": args.size, "machine": machine(), "batch_size": args.batch_size, "layers": args.layers,
              "results": results, "weights_gib_measured": by_depth[1]["weights_gib"], "full_parameters": n_full}
    return publish(report, markdown(report), args.json)


if __name__ == "__main__":
    user_error_exit(main)
