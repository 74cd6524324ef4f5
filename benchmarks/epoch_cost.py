"""What one Noise Diffusion epoch costs, part by part, against its physical minimum.

    python benchmarks/epoch_cost.py --preset tiny --batch_size 1 8 --json epoch_cost.json

For each batch size it times, with the library's own pieces and device synchronisation around every timed call:
guided sampling (``generator.sample``), the differentiable replay, VAE decode forward/backward, verifier forward/backward,
the candidate selection (``methods.METHODS[...].propose``), the host copies of the images, and — only paid when
per-epoch images are saved — PNG encoding. The epoch itself is timed inside ``optimize()`` (the interval between the
``on_epoch`` callbacks of consecutive epochs that all take a gradient), so it includes everything the loop does.

The *physical minimum* of an epoch is what any implementation must do: one plain guided generation, one decode and one
verifier forward/backward (back to the final latent), measured the same way. ``epoch / minimum`` is the loop's overhead.
Medians over ``--repeats``; on a shared CPU the numbers are noisy.
"""

from __future__ import annotations

import collections
import contextlib
import io
import statistics

import torch

import common  # noqa: F401  (puts the project on sys.path)
from noise_diffusion.cli import ArgumentParser, add_search_args, positive_int, search_config  # noqa: E402
from common import (
    WALL, Clock, add_model_args, build_models, clock_for, count_parameters, machine, peak_memory, prompts_for,
    publish_batches, reset_peak_memory, synchronize, timed, user_error_exit, BENCHMARK_PROMPTS,
)
from noise_diffusion import SearchConfig, optimize
from noise_diffusion.generators.base import initial_latents
from noise_diffusion.images import tensor_to_pil

PROMPTS = list(BENCHMARK_PROMPTS)


def batch_items(batch: int, prompts: list[str] | None = None) -> tuple[list[str], list[int]]:
    """``batch`` items cycling through the prompts (the models' own prompt set when they have one), seeds 0..B-1."""
    prompts = prompts or PROMPTS
    return [prompts[i % len(prompts)] for i in range(batch)], list(range(batch))


def time_parts(generator, verifier, prompts, seeds, repeats: int, clock: Clock = WALL) -> dict[str, float]:
    """Median seconds of what the in-epoch breakdown does not split: the backward's two halves, the host copies of
    the images, PNG encoding (paid only when per-epoch images are saved) and the prompt encoding (once per run)."""
    device = generator.device
    z = initial_latents(generator.latent_shape, seeds).to(device)
    parts: dict[str, float] = {}
    parts["encode prompts (once per run)"], cond = timed(lambda: generator.encode_prompts(prompts), device, repeats,
                                                            clock=clock)
    sampled = generator.sample(z, cond)
    segments: dict[str, list[float]] = {"verifier backward": [], "decode + replay backward": []}
    for _ in range(repeats + 1):  # the first pass is a warm-up
        leaf = z.detach().requires_grad_(True)
        images = generator.decode(generator.replay(leaf, sampled.record))
        image_leaf = images.detach().requires_grad_(True)
        scores = verifier(image_leaf, prompts)
        marks = [_now(device, clock)]
        (image_grad,) = torch.autograd.grad(scores.sum(), image_leaf)
        marks.append(_now(device, clock))
        torch.autograd.grad(images, leaf, image_grad)
        marks.append(_now(device, clock))
        for key, start, end in zip(segments, marks, marks[1:]):
            segments[key].append(end - start)
    parts.update({k: statistics.median(v[1:]) for k, v in segments.items()})
    parts["image copies to host"], _ = timed(lambda: [images[j].detach().float().cpu() for j in range(len(seeds))],
                                             device, repeats, clock=clock)
    parts["PNG encoding (only with per-epoch images)"], _ = timed(lambda: _encode_png(images), device, repeats,
                                                                  clock=clock)
    return parts


def _encode_png(images) -> int:
    size = 0
    for pil in tensor_to_pil(images.detach()):
        buffer = io.BytesIO()
        pil.save(buffer, format="PNG")
        size += buffer.tell()
    return size


def _now(device, clock: Clock) -> float:
    synchronize(device)
    return clock.now()


def minimum_pass(generator, verifier, prompts, seeds):
    """One plain guided generation + decode + verifier forward/backward to the final latent (what any loop must do)."""
    z = initial_latents(generator.latent_shape, seeds).to(generator.device)
    cond = generator.encode_prompts(prompts)

    def minimum():
        final = generator.sample(z, cond).latents.detach().requires_grad_(True)
        scores = verifier(generator.decode(final), prompts)
        return torch.autograd.grad(scores.sum(), final)

    return minimum


BREAKDOWN = ("guided sampling", "replay", "decode forward", "verifier forward", "backward (verifier, decode, replay)",
             "selection (pool, alignments, update)")


class _PartTimer:
    """Attributes an epoch's time to its parts from the hooks that the library's modules and tensors offer: the
    denoiser's calls without gradients (guided sampling), the gap from the last of them to the VAE decoder when the
    gradient is taken (the replay: the scheduler's steps with the predictions held fixed), the decoder's and the
    verifier's forward passes, and the backward from the gradient of the scores to that of the latent. The gap from
    the end of a pass, or from the last :meth:`mark` (an epoch's end) when later, to the next sampling is the
    selection."""

    def __init__(self, device, clock: Clock) -> None:
        self.device, self.clock = device, clock
        self.totals: dict[str, float] = collections.defaultdict(float)
        self.sampling_start = self.network_end = self.part_start = self.last_end = self.epoch_end = None

    def now(self) -> float:
        synchronize(self.device)
        return self.clock.now()

    def mark(self) -> None:
        self.epoch_end = self.now()

    def network_starts(self, module, inputs) -> None:
        if torch.is_grad_enabled() or self.sampling_start is not None:
            return
        tick = self.now()
        if self.last_end is not None:
            self.totals[BREAKDOWN[5]] += tick - max(self.last_end, self.epoch_end or self.last_end)
        self.sampling_start = self.network_end = tick

    def network_ends(self, module, inputs, output) -> None:
        if self.sampling_start is not None:
            self.network_end = self.now()

    def decode_starts(self, module, inputs) -> None:
        tick = self.now()
        if self.sampling_start is not None:
            self.totals[BREAKDOWN[0]] += self.network_end - self.sampling_start
            if torch.is_grad_enabled():
                self.totals[BREAKDOWN[1]] += tick - self.network_end
            self.sampling_start = None
        for leaf in _leaves(inputs[0]):  # where the backward ends
            leaf.register_hook(self.backward_ends)
        self.part_start = self.now()

    def decode_ends(self, module, inputs, output) -> None:
        self.totals[BREAKDOWN[2]] += self.now() - self.part_start

    def verifier_starts(self, module, inputs) -> None:
        self.part_start = self.now()

    def verifier_ends(self, module, inputs, output) -> None:
        self.last_end = self.now()
        self.totals[BREAKDOWN[3]] += self.last_end - self.part_start
        if output.requires_grad:
            output.register_hook(self.backward_starts)

    def backward_starts(self, grad) -> None:
        self.part_start = self.now()

    def backward_ends(self, grad) -> None:
        self.last_end = self.now()
        self.totals[BREAKDOWN[4]] += self.last_end - self.part_start


def _leaves(tensor: torch.Tensor) -> list[torch.Tensor]:
    """The leaf tensors that ``tensor`` was computed from under autograd (the latent of the replay)."""
    leaves, seen, todo = [], set(), [tensor.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "variable"):
            leaves.append(node.variable)
        todo.extend(fn for fn, _ in node.next_functions)
    return leaves


@contextlib.contextmanager
def attributed(generator, verifier, clock: Clock = WALL, timer: _PartTimer | None = None):
    """While ``optimize()`` runs, accumulate the time spent in each of the library's pieces (see :class:`_PartTimer`),
    through forward hooks on the denoiser, the VAE decoder and the verifier and gradient hooks on their tensors, all
    removed at the end; yields the running totals. What an epoch spends outside them is the loop's own bookkeeping
    (merging, host copies, records, callbacks)."""
    timer = timer or _PartTimer(generator.device, clock)
    decoder = getattr(generator.vae, "decoder", generator.vae)
    handles = [generator.denoiser.register_forward_pre_hook(timer.network_starts),
               generator.denoiser.register_forward_hook(timer.network_ends),
               decoder.register_forward_pre_hook(timer.decode_starts),
               decoder.register_forward_hook(timer.decode_ends),
               verifier.register_forward_pre_hook(timer.verifier_starts),
               verifier.register_forward_hook(timer.verifier_ends)]
    try:
        yield timer.totals
    finally:
        for handle in handles:
            handle.remove()


def epoch_breakdown(generator, verifier, prompts, seeds, config: SearchConfig, clock: Clock = WALL) -> dict[str, float]:
    """Median seconds per part of the gradient epochs of one instrumented ``optimize()`` run; the parts sum to the
    epoch, the last one being the loop's bookkeeping."""
    last = len(prompts) - 1
    snapshots: dict[int, tuple[float, dict]] = {}
    timer = _PartTimer(generator.device, clock)
    with attributed(generator, verifier, timer=timer) as totals:
        def on_epoch(item, epoch, image, record):
            if item == last:
                timer.mark()
                snapshots[epoch] = (timer.epoch_end, dict(totals))

        optimize(generator, verifier, prompts, seeds, config, progress=False, on_epoch=on_epoch)
    rows: dict[str, list[float]] = collections.defaultdict(list)
    for e in range(1, config.max_epoch):
        (t0, a), (t1, b) = snapshots[e - 1], snapshots[e]
        parts = {k: b.get(k, 0.0) - a.get(k, 0.0) for k in BREAKDOWN}
        for k, v in parts.items():
            rows[k].append(v)
        rows["bookkeeping (the rest of the epoch)"].append((t1 - t0) - sum(parts.values()))
        rows["epoch"].append(t1 - t0)
    return {k: statistics.median(v) for k, v in rows.items()}


def time_epochs(generator, verifier, prompts, seeds, config: SearchConfig, runs: int, clock: Clock = WALL) -> dict:
    """Epoch seconds measured inside ``optimize()``, interleaved with the physical minimum.

    An epoch's interval runs from the end of the previous epoch's last ``on_epoch`` call to its own last call; epochs
    1 .. max_epoch-1 all compute a gradient (the last one does not, as nothing follows it) and are the ones kept.
    After every epoch the callback times one minimum pass (outside the epoch's interval), so that both are measured
    under the same machine load: on a shared CPU the load drifts by more than the overheads being measured.
    """
    device = generator.device
    minimum = minimum_pass(generator, verifier, prompts, seeds)
    minimum()  # warm-up
    last = len(prompts) - 1
    intervals, minima, totals = [], [], []
    for _ in range(runs):
        ends: dict[int, float] = {}
        starts: dict[int, float] = {}

        def on_epoch(item, epoch, image, record):
            if item != last:
                return
            synchronize(device)
            ends[epoch] = clock.now()
            if epoch < config.max_epoch - 1:
                tick = clock.now()
                minimum()
                synchronize(device)
                minima.append(clock.now() - tick)
            starts[epoch] = clock.now()

        synchronize(device)
        begin = clock.now()
        optimize(generator, verifier, prompts, seeds, config, progress=False, on_epoch=on_epoch)
        synchronize(device)
        totals.append(clock.now() - begin - sum(starts[e] - ends[e] for e in ends))
        intervals += [ends[e] - starts[e - 1] for e in range(1, config.max_epoch)]
    # epoch e is paired with the minimum pass timed just before it (after epoch e-1)
    paired = [i / m for i, m in zip(intervals, minima)]
    return {
        "epoch_seconds": statistics.median(intervals),
        "minimum_seconds": statistics.median(minima),
        "epoch_over_minimum": statistics.median(paired),
        "epoch_intervals": intervals,
        "minimum_samples": minima,
        "optimize_total_seconds": statistics.mean(totals),
    }


def use_cpu_timesteps(generator) -> None:
    """Experiment (a proposal for the generators' ``_set_timesteps`` hook): timesteps on the CPU.

    diffusers' DDIM/PNDM ``step`` index CPU tables (``alphas_cumprod``) with the timestep and test
    ``prev_timestep >= 0``; with timesteps on the GPU each of these is a host sync, once per sampler step. With CPU
    timesteps the UNet gets a CPU scalar, which it copies to the device without waiting for the queue.
    """
    original = generator._set_timesteps

    def set_timesteps(scheduler) -> None:
        original(scheduler)
        scheduler.timesteps = scheduler.timesteps.cpu()

    generator._set_timesteps = set_timesteps


def generator_parameters(generator) -> int:
    """Parameters of every module of the generator's diffusers pipeline."""
    components = getattr(getattr(generator, "pipe", None), "components", {}) or {}
    return sum(count_parameters(m) for m in components.values() if isinstance(m, torch.nn.Module))


def measure(generator, verifier, batch: int, args, clock: Clock = WALL) -> dict:
    prompts, seeds = batch_items(batch, prompts_for(verifier))
    device = generator.device
    config = search_config(args)
    reset_peak_memory(device)
    timing = time_epochs(generator, verifier, prompts, seeds, config, args.runs, clock)
    memory, memory_kind = peak_memory(device)
    breakdown = epoch_breakdown(generator, verifier, prompts, seeds, config, clock)
    parts = time_parts(generator, verifier, prompts, seeds, args.repeats, clock)
    # what the loop adds to the minimum's work inside the same epochs (the replay's share of the backward, a few
    # element-wise ops per step, stays in the backward: the ratio is a slight underestimate)
    extra = sum(breakdown[k] for k in (BREAKDOWN[1], BREAKDOWN[5], "bookkeeping (the rest of the epoch)"))
    return {
        "batch_size": batch,
        "breakdown_seconds": breakdown,
        "epoch_over_minimum_breakdown": breakdown["epoch"] / (breakdown["epoch"] - extra),
        "parts_seconds": parts,
        **timing,
        "seconds_per_image_per_epoch": timing["epoch_seconds"] / batch,
        "peak_memory_gib": memory,
        "peak_memory_kind": memory_kind,
    }


def markdown(report: dict) -> str:
    lines = [f"**{report['models']}** on {report['machine']}; {report['settings']}", ""]
    for row in report["results"]:
        b, breakdown = row["batch_size"], row["breakdown_seconds"]
        epoch = breakdown["epoch"]
        lines += [f"Batch {b}, one instrumented `optimize()` run (median over its gradient epochs):", "",
                  "| part of the epoch | s per batch | s per image | % |", "|---|---:|---:|---:|"]
        for part, sec in breakdown.items():
            lines.append(f"| {part} | {sec:.4f} | {sec / b:.4f} | {100 * sec / epoch:.1f} |")
        lines += ["", "| timed separately | s per batch | s per image |", "|---|---:|---:|"]
        for part, sec in row["parts_seconds"].items():
            lines.append(f"| {part} | {sec:.4f} | {sec / b:.4f} |")
        lines.append("")
    lines += ["| batch | epoch (optimize) s | physical minimum s | epoch / minimum (paired) | epoch / minimum "
              "(breakdown) | s per image per epoch | peak memory GiB |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for row in report["results"]:
        lines.append(f"| {row['batch_size']} | {row['epoch_seconds']:.4f} | {row['minimum_seconds']:.4f} | "
                     f"{row['epoch_over_minimum']:.3f} | {row['epoch_over_minimum_breakdown']:.3f} | "
                     f"{row['seconds_per_image_per_epoch']:.4f} | "
                     f"{row['peak_memory_gib']:.2f} ({row['peak_memory_kind']}) |")
    lines += ["", "epoch / minimum (paired): median over epochs of (epoch time / the minimum pass timed just before it); "
              "(breakdown): epoch / (epoch − replay − selection − bookkeeping) within the instrumented run, robust to "
              "machine load."]
    return "\n".join(lines)


def main() -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(parser)
    add_search_args(parser, with_method=False)
    parser.set_defaults(max_epoch=4)
    parser.add_argument("--batch_size", type=positive_int, nargs="+", default=[1], help="one or more batch sizes")
    parser.add_argument("--epochs", dest="max_epoch", type=positive_int,
                        help="epochs per timed optimize() run, the same as --max_epoch (>= 2; default 4)")
    parser.add_argument("--runs", type=int, default=1,
                        help="timed optimize() runs per batch size, besides the instrumented one (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of each part (default 3)")
    parser.add_argument("--cpu_timesteps", action="store_true",
                        help="experiment: keep the scheduler's timesteps on the CPU, so that scheduler.step indexes its "
                             "CPU tables without a host sync per step on a GPU")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.max_epoch < 2:
        parser.error("--epochs must be >= 2 (epoch 1 .. epochs-1 are timed)")
    generator, verifier, models = build_models(args)
    clock = clock_for(args.clock, generator.device)
    if args.cpu_timesteps:
        use_cpu_timesteps(generator)
    settings = generator.settings()
    report = {
        "models": models,
        "machine": machine(),
        "settings": (f"{settings['num_steps']} steps ({settings.get('scheduler_class', '?')}), guidance "
                     f"{settings['guidance_scale']}, {settings['height']}x{settings['width']}, dtype {settings['dtype']}, "
                     f"verifier dtype {str(next(verifier.parameters()).dtype).removeprefix('torch.')}, "
                     f"N = {args.num_candidate_noises}, compile {args.compile}, CPU timesteps {args.cpu_timesteps}, "
                     f"memory options {[k for k in ('cpu_offload', 'vae_slicing', 'vae_checkpointing') if settings.get(k)]}; "
                     f"timed by {clock.name}"),
        "parameters": {"generator": generator_parameters(generator), "verifier": count_parameters(verifier)},
        "results": [],
    }
    return publish_batches(report, args.batch_size, lambda batch: measure(generator, verifier, batch, args, clock),
                           lambda row: f"{row['epoch_seconds']:.4f} s", markdown, args.json)


if __name__ == "__main__":
    user_error_exit(main)
