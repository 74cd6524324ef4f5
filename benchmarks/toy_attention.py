"""Does a toy world's text conditioning go through the subject tokens? Cross-attention of the two digits' tokens, and
the plain sampler's neglect rate on existence prompts.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/toy_attention.py --sd_version toy-digits-attn

Measured on diffusers' own ``StableDiffusionPipeline`` with a recording attention processor of this script on every
cross-attention layer (the package's attention code is not used), read over the first half of the denoising steps at
the finest cross-attention grid (8x8 for the toy worlds), conditional half of classifier-free guidance only, mean over
layers and heads, then prepared as the attention baselines' originals do: drop the first and the last token, x100
softmax over the rest, each subject's map smoothed with their 3x3 Gaussian (sigma 0.5, kernel exp(-((x-mu)/(2 sigma))^2),
reflect padding). Per image and step:

- **peak**: the largest value of each subject's smoothed map (1 - peak is the baselines' response loss);
- **overlap**: sum(min(a, b)) / sum(a + b) of the two subjects' smoothed maps (0 disjoint, 0.5 identical);
- **mass where drawn**: the share of a subject's map inside the 16x16 box (4x4 cells) where the judge finds that digit
  (the box whose most likely class it is; subjects the judge finds nowhere are left out). A uniform map gives 0.25.

Per image the step values are averaged; the tables give medians (and 10th/90th percentiles) over images. The neglect
rate: share of existence prompts' plain-sampler images in which the judge finds exactly one of the two digits.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from noise_diffusion.generators import resolve_model  # noqa: E402
from noise_diffusion.toy import world  # noqa: E402  (registers the toy worlds)
from noise_diffusion.verifiers import load_verifier  # noqa: E402

#: the four nominal boxes as (row, column) of the top-left pixel: H first/second, V first/second
BOXES = [world.BOXES["H"][0], world.BOXES["H"][1], world.BOXES["V"][0], world.BOXES["V"][1]]


class RecordingCrossAttention:
    """Plain scaled-dot-product attention that keeps the conditional half's probabilities at one query grid."""

    def __init__(self, log: list, cells: int) -> None:
        self.log, self.cells, self.active = log, cells, False

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        if attn.spatial_norm is not None or attn.group_norm is not None or attn.residual_connection or attention_mask is not None:
            raise RuntimeError("this recorder handles plain transformer cross-attention only")
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch, length, _ = hidden_states.shape
        heads = attn.heads

        def split(x):  # [B, N, heads*d] -> [B, heads, N, d]
            return x.view(batch, x.shape[1], heads, -1).transpose(1, 2)

        query, key, value = split(attn.to_q(hidden_states)), split(attn.to_k(context)), split(attn.to_v(context))
        probabilities = torch.softmax(query @ key.transpose(-1, -2) * attn.scale, dim=-1)
        if self.active and length == self.cells:
            self.log.append(probabilities[batch // 2:].detach().mean(1))  # conditional half, mean over heads
        out = (probabilities @ value).transpose(1, 2).reshape(batch, length, -1)
        return attn.to_out[1](attn.to_out[0](out)) / attn.rescale_output_factor


def check_recorder(pipe) -> float:
    """The recorder must not change the UNet: largest difference to diffusers' own processors on one forward."""
    unet = pipe.unet
    sample = torch.randn(2, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size,
                         generator=torch.Generator("cpu").manual_seed(0))
    context = torch.randn(2, pipe.tokenizer.model_max_length, unet.config.cross_attention_dim,
                          generator=torch.Generator("cpu").manual_seed(1))
    original = dict(unet.attn_processors)
    with torch.no_grad():
        expected = unet(sample, 500, encoder_hidden_states=context).sample
        side = unet.config.sample_size
        unet.set_attn_processor({k: (RecordingCrossAttention([], side * side) if ".attn2." in k else v)
                                 for k, v in original.items()})
        got = unet(sample, 500, encoder_hidden_states=context).sample
    unet.set_attn_processor(original)
    difference = float((got - expected).abs().max())
    if difference > 1e-4:
        raise RuntimeError(f"the recording processor changes the UNet's output by {difference}")
    return difference


def originals_kernel() -> torch.Tensor:
    coords = torch.arange(3, dtype=torch.float32) - 1
    one = torch.exp(-((coords / (2 * 0.5)) ** 2))
    kernel = one[:, None] * one[None, :]
    return kernel / kernel.sum()


def prepare(cross: torch.Tensor, indices: list[int], side: int) -> list[torch.Tensor]:
    """``cross`` [HW, tokens] -> the two subjects' smoothed ``[side, side]`` maps."""
    prepared = torch.softmax(cross[:, 1:-1] * 100, dim=-1)
    maps = []
    for i in indices:
        m = prepared[:, i - 1].reshape(1, 1, side, side)
        maps.append(F.conv2d(F.pad(m, (1, 1, 1, 1), mode="reflect"), originals_kernel()[None, None])[0, 0])
    return maps


def where_drawn(probabilities: torch.Tensor, digit: int) -> int | None:
    """Index of the box whose most likely class is ``digit`` (the most confident such box), or None."""
    best = None
    for box in range(len(BOXES)):
        if int(probabilities[box].argmax()) == digit and (best is None or probabilities[box, digit] > probabilities[best, digit]):
            best = box
    return best


def box_mass(attention_map: torch.Tensor, box: int, side: int) -> float:
    cell = world.CANVAS // side
    top, left = BOXES[box][0] // cell, BOXES[box][1] // cell
    size = world.DIGIT // cell
    return float(attention_map[top:top + size, left:left + size].sum() / attention_map.sum().clamp_min(1e-12))


def sample_prompts(count: int, seed: int) -> list[str]:
    """``count`` spatial and ``count`` existence prompts, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    pairs = [(a, b) for a in range(10) for b in range(10) if a != b]
    spatial = [world.make_prompt(pairs[i][0], world.RELATIONS[k % 4], pairs[i][1])
               for k, i in enumerate(rng.choice(len(pairs), count, replace=False))]
    existence = [world.make_prompt(pairs[i][0], "and", pairs[i][1]) for i in rng.choice(len(pairs), count, replace=False)]
    return spatial + existence


def run_batch(pipe, prompts: list[str], seeds: list[int], steps: int, guidance: float, side: int):
    """Images [N, 3, 32, 32] and the per-step recorded maps of one batch."""
    log: list = []
    recorder = RecordingCrossAttention(log, side * side)
    pipe.unet.set_attn_processor({name: (recorder if ".attn2." in name else proc)
                                  for name, proc in pipe.unet.attn_processors.items()})
    shape = (pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    latents = torch.stack([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(s)) for s in seeds])
    per_step: list[list] = []

    def on_step(pipeline, step, timestep, kwargs):
        per_step.append(list(log))
        log.clear()
        recorder.active = step + 1 < math.ceil(steps / 2)
        return kwargs

    recorder.active = True
    with torch.no_grad():
        images = pipe(prompts, latents=latents, num_inference_steps=steps, guidance_scale=guidance, output_type="pt",
                      callback_on_step_end=on_step).images
    per_step = [layers for layers in per_step if layers]
    return images, per_step


def measure(pipe, judge, prompts, seeds, steps, guidance, side) -> list[dict]:
    items = [(p, s) for p in prompts for s in seeds]
    images, per_step = run_batch(pipe, [p for p, _ in items], [s for _, s in items], steps, guidance, side)
    with torch.no_grad():
        box_probs = judge.box_probabilities(images.float())
    rows = []
    for n, (prompt, seed) in enumerate(items):
        parsed = world.parse_prompt(prompt)
        indices = [2, len(prompt.split())]
        peaks, overlaps, masses = [], [], []
        drawn = [where_drawn(box_probs[n], d) for d in (parsed.a, parsed.b)]
        for layers in per_step:
            cross = torch.stack([layer[n] for layer in layers]).mean(0)  # mean over the grid's layers
            maps = prepare(cross, indices, side)
            peaks.append([float(m.max()) for m in maps])
            overlaps.append(float(torch.minimum(*maps).sum() / ((maps[0] + maps[1]).sum() + 1e-6)))
            masses.append([box_mass(m, box, side) if box is not None else None for m, box in zip(maps, drawn)])
        found = [box is not None for box in drawn]
        # the box beside the one found digit (same layout, other slot; boxes 0-1 are H, 2-3 are V) shows no digit
        seen = [box for box in drawn if box is not None]
        partner_empty = len(seen) == 1 and int(box_probs[n, seen[0] ^ 1].argmax()) == 10  # class 10: "no digit"
        raw = torch.stack([torch.stack(layers)[:, n].mean(0) for layers in per_step]).mean((0, 1))  # [tokens]
        by_role: dict[str, list] = {}
        for role, value in zip(roles(prompt, len(raw)), raw[1:-1].tolist()):
            by_role.setdefault(role, []).append(value)
        rows.append({"prompt": prompt, "seed": seed, "family": "existence" if parsed.relation == "and" else "spatial",
                     "peaks": np.mean(peaks, 0).tolist(), "overlap": float(np.mean(overlaps)),
                     "mass": [float(np.mean([m[k] for m in masses])) if found[k] else None for k in range(2)],
                     "role_attention": {k: float(np.mean(v)) for k, v in by_role.items()},
                     "found": found, "partner_empty": partner_empty, "faithful": bool(judge.is_faithful(images[n:n + 1].float(), [prompt])[0])})
    return rows


def roles(prompt: str, tokens: int) -> list[str]:
    """Role of each token position 1..tokens-2 (the kept ones): subject, relation, article or end/padding."""
    words = prompt.split()
    subjects = {2, len(words)}
    out = []
    for position in range(1, tokens - 1):
        if position > len(words):
            out.append("end/padding")
        elif position in subjects:
            out.append("subject")
        else:
            out.append("article" if words[position - 1] in ("a", "an") else "relation")
    return out


def quantiles(values) -> dict:
    values = np.asarray([v for v in values if v is not None], dtype=float)
    return {"median": float(np.median(values)), "p10": float(np.quantile(values, 0.1)),
            "p90": float(np.quantile(values, 0.9)), "n": int(len(values))}


def summarise(rows: list[dict]) -> dict:
    out = {}
    for family in ("all", "spatial", "existence"):
        chosen = [r for r in rows if family == "all" or r["family"] == family]
        out[family] = {
            "peak": quantiles([p for r in chosen for p in r["peaks"]]),
            "overlap": quantiles([r["overlap"] for r in chosen]),
            "mass_where_drawn": quantiles([m for r in chosen for m in r["mass"]]),
            "faithful": float(np.mean([r["faithful"] for r in chosen])),
        }
    role_names = sorted({k for r in rows for k in r["role_attention"]})
    out["role_attention"] = {k: float(np.mean([r["role_attention"][k] for r in rows if k in r["role_attention"]]))
                             for k in role_names}
    existence = [r for r in rows if r["family"] == "existence"]
    out["neglect"] = {
        "one_of_two": float(np.mean([sum(r["found"]) == 1 for r in existence])),
        "one_beside_nothing": float(np.mean([r["partner_empty"] for r in existence])),
        "neither": float(np.mean([sum(r["found"]) == 0 for r in existence])),
        "both": float(np.mean([sum(r["found"]) == 2 for r in existence])), "images": len(existence),
    }
    return out


def markdown(summary: dict, args, seconds: float) -> str:
    lines = [f"# Subject cross-attention in `{args.sd_version}`", "",
             f"`python benchmarks/toy_attention.py --sd_version {args.sd_version}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
             f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {seconds / 60:.1f} min); {args.prompts} spatial + "
             f"{args.prompts} existence prompts x seeds {', '.join(map(str, args.seeds))}; {args.steps} steps, CFG "
             f"{args.guidance}; judge `{args.judge}`.", "",
             "| prompts | peak, median [p10, p90] | overlap, median [p10, p90] | mass where drawn, median [p10, p90] | judged faithful |",
             "|---|---|---|---|---|"]
    for family in ("all", "spatial", "existence"):
        s = summary[family]
        cell = lambda q: f"{q['median']:.3f} [{q['p10']:.3f}, {q['p90']:.3f}]"  # noqa: E731
        lines.append(f"| {family} | {cell(s['peak'])} | {cell(s['overlap'])} | {cell(s['mass_where_drawn'])} "
                     f"(n = {s['mass_where_drawn']['n']}) | {100 * s['faithful']:.1f} % |")
    roles_text = ", ".join(f"{k} {v:.4f}" for k, v in summary["role_attention"].items())
    lines += ["", f"Mean attention per kept token by role, before the x100 softmax (uniform over the kept tokens: "
              f"{1 / summary['kept_tokens']:.4f}): {roles_text}."]
    n = summary["neglect"]
    lines += ["", f"Plain sampler on the existence prompts ({n['images']} images): the judge finds exactly one of the two "
              f"digits in **{100 * n['one_of_two']:.1f} %** (neglect; in {100 * n['one_beside_nothing']:.1f} % the box "
              f"beside the found digit holds no digit at all, in the rest a wrong or unreadable one), neither in {100 * n['neither']:.1f} %, both in "
              f"{100 * n['both']:.1f} %.", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sd_version", default="toy-digits-attn", help="toy pipeline name or folder (default: %(default)s)")
    parser.add_argument("--judge", default="toy-digits-heldout-resnet", help="verifier that finds the digits (default: %(default)s)")
    parser.add_argument("--prompts", type=int, default=24, help="prompts per family (default: %(default)s)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds per prompt (default: %(default)s)")
    parser.add_argument("--prompt_seed", type=int, default=1234, help="seed of the prompt sample (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the world's setting)")
    parser.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the world's setting)")
    parser.add_argument("--resolution", type=int, default=8, help="query grid side read (default: %(default)s)")
    parser.add_argument("--out", default="results/toy_attention", help="folder for summary.md / summary.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.process_time()
    folder = Path(resolve_model(args.sd_version))
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    defaults = json.loads((folder / "noise_diffusion.json").read_text())
    args.steps = args.steps or defaults["num_steps"]
    args.guidance = args.guidance or defaults["guidance_scale"]
    judge = load_verifier(args.judge)
    args.recorder_difference = check_recorder(pipe)
    started = time.process_time()  # the measurement itself, loading left out
    rows = measure(pipe, judge, sample_prompts(args.prompts, args.prompt_seed), args.seeds, args.steps, args.guidance,
                   args.resolution)
    summary = summarise(rows)
    summary["kept_tokens"] = pipe.tokenizer.model_max_length - 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seconds = time.process_time() - started
    (out / "summary.json").write_text(json.dumps({"settings": vars(args), "summary": summary, "rows": rows}, indent=1))
    (out / "summary.md").write_text(markdown(summary, args, seconds))
    print(markdown(summary, args, seconds))


if __name__ == "__main__":
    main()
