"""Time per image of a VQA verifier's forward + backward (gradient w.r.t. the images), batched against one at a time.

    python benchmarks/verifier_cost.py --batch_size 1 4 8 --json verifier_cost.json
    python benchmarks/verifier_cost.py --shape clip-flant5-xl --layers 1 --batch_size 1 4 8 --repeats 1

Models: by default the test suite's tiny random-weight verifiers of every family (``noise_diffusion.testing.vqa``:
CLIP-FlanT5, LLaVA in transformers' and in the original layout, Qwen2.5-VL, SmolVLM, InstructBLIP) on 64×64 images;
with ``--shape``, CLIP-FlanT5 of the published widths (CLIP ViT-L/14-336 tower, FlanT5-XL/XXL: 577 image tokens, the
real prompt lengths) with ``--layers`` layers in each stack instead of 24, on 512×512 images.

For each batch size: *batched* (one forward and one backward for the whole batch, the default) and *one at a time*
(``micro_batch=1``: a forward and a backward per image, the work of scoring item by item). The prompts have different
lengths (padding included). Medians over ``--repeats``; process CPU time on a CPU.
"""

from __future__ import annotations

import torch

import common  # noqa: F401  (puts the project on sys.path)
from common import (
    WALL, Clock, _cached, build_clip_flant5_verifier, clock_for, machine, publish, timed, user_error_exit,
)
from epoch_cost import PROMPTS, batch_items
from noise_diffusion.specs import resolve_device
from noise_diffusion.cli import ArgumentParser
from noise_diffusion.verifiers import load_verifier
from noise_diffusion.testing import vqa as tiny_vqa

TINY = {
    "clip-flant5 (tiny)": tiny_vqa.build_tiny_clip_t5,
    "llava (tiny)": tiny_vqa.build_tiny_llava,
    "llava original layout (tiny)": tiny_vqa.build_tiny_original_llava,
    "qwen2.5-vl (tiny)": tiny_vqa.build_tiny_qwen2_5_vl,
    "smolvlm (tiny)": tiny_vqa.build_tiny_smolvlm,
    "instructblip (tiny)": tiny_vqa.build_tiny_instructblip,
}


def seconds_per_image(verifier, images: torch.Tensor, prompts: list[str], micro_batch: int | None, repeats: int,
                      clock: Clock = WALL) -> float:
    verifier.micro_batch = micro_batch

    def step():
        leaf = images.detach().requires_grad_(True)
        return torch.autograd.grad(verifier(leaf, prompts).sum(), leaf)

    seconds, _ = timed(step, verifier.device, repeats=repeats, clock=clock)
    verifier.micro_batch = None
    return seconds / len(prompts)


def verifiers(args, device):
    if args.shape:
        size = args.shape.removeprefix("clip-flant5-")
        name = f"CLIP-FlanT5-{size.upper()} widths, {args.layers} layer(s) per stack of 24 (random weights)"
        yield name, build_clip_flant5_verifier(size, device, args.dtype, layers=args.layers), 512
        return
    for name, build in TINY.items():
        folder = _cached("vqa_" + build.__name__.removeprefix("build_"), build)
        yield name, load_verifier(folder, device, args.dtype), 64


def markdown(report: dict) -> str:
    lines = [f"**{report['machine']}**; {report['settings']}", "",
             "| verifier | batch | batched s/image | one at a time s/image | one at a time / batched |",
             "|---|---:|---:|---:|---:|"]
    for row in report["results"]:
        lines.append(f"| {row['verifier']} | {row['batch_size']} | {row['batched']:.4f} | {row['one_at_a_time']:.4f} | "
                     f"{row['one_at_a_time'] / row['batched']:.2f}× |")
    return "\n".join(lines)


def main() -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch_size", type=int, nargs="+", default=[1, 4, 8], help="batch sizes (default 1 4 8)")
    parser.add_argument("--shape", choices=("clip-flant5-xl", "clip-flant5-xxl"), default=None,
                        help="CLIP-FlanT5 of the published widths instead of the tiny verifiers")
    parser.add_argument("--layers", type=int, default=1, help="with --shape: layers per stack (default 1; real: 24)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (default 3)")
    parser.add_argument("--device", default="cpu", help="device (default cpu)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                        help="the verifier's precision (default float32)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    if min(args.batch_size) < 1 or args.layers < 1 or args.repeats < 1:
        parser.error("--batch_size, --layers and --repeats must be >= 1")
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    args.dtype = getattr(torch, args.dtype)
    clock = clock_for("auto", device)
    report = {"machine": machine(), "settings": f"{str(args.dtype).removeprefix('torch.')}, forward + backward to the images, median of {args.repeats}, "
                                                 f"timed by {clock.name}", "results": []}
    for name, verifier, side in verifiers(args, device):
        for batch in args.batch_size:
            prompts, seeds = batch_items(batch, PROMPTS)
            images = torch.rand(batch, 3, side, side, generator=torch.Generator().manual_seed(batch)).to(device)
            row = {"verifier": name, "batch_size": batch,
                   "batched": seconds_per_image(verifier, images, prompts, None, args.repeats, clock),
                   "one_at_a_time": seconds_per_image(verifier, images, prompts, 1, args.repeats, clock)}
            report["results"].append(row)
            print(f"{name}, batch {batch}: {row['batched']:.4f} s/image batched, {row['one_at_a_time']:.4f} one at a "
                  "time", flush=True)
    return publish(report, markdown(report), args.json)


if __name__ == "__main__":
    user_error_exit(main)
