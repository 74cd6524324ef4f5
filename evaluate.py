#!/usr/bin/env python
"""Run a search method over a prompt dataset and several seeds, then report scores, compute, image grids and curves.

Examples:
    python evaluate.py --dataset simple --seeds 33 --method noise_diffusion --result_root results/simple
    python evaluate.py --dataset complex --method best_of_n --result_root results/complex     # same generations
    accelerate launch evaluate.py --dataset simple --result_root results/simple               # one shard per GPU
    python evaluate.py --report results/simple                                                # report only

Results go to <result_root>/<method>/<prompt folder>/<seed>/ (the layout of run.py); a re-run skips finished runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:  # the imports take seconds (torch, diffusers): Ctrl-C meanwhile is a clean exit too
    import torch

    from noise_diffusion import api, cli
    from noise_diffusion.datasets import dataset_kind, load_dataset, resolve
    from noise_diffusion.evaluation import (
        check_settings, held_out_todo, job_folder, make_jobs, pending_jobs, processes, rescore_held_out, run_jobs,
        shard,
    )
    from noise_diffusion.generators import pipeline_class_name, resolve_model
    from noise_diffusion.report import OVERALL, write_report
    from noise_diffusion.results import check_writable, expected_settings as settings_of_runs
    from noise_diffusion.scorers import scorer_loader
except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    sys.exit(130)


def shard_spec(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected INDEX/COUNT such as 0/4, got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"need 0 <= INDEX < COUNT, got {text!r}")
    return index, count


def parse_args(argv=None) -> argparse.Namespace:
    parser = cli.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, max_help_position=32, width=110),
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--report", metavar="DIR", default=None,
                        help="only rebuild the report from the finished results in DIR (no generation)")
    g = parser.add_argument_group("prompts and seeds")
    g.add_argument("--dataset", default="simple",
                   help="'simple' or 'complex' (the paper's sets in datasets/), or a file: the authors' JSON format, "
                        "a JSON list of prompts, or a text file with one prompt per line (default: %(default)s)")
    g.add_argument("--categories", nargs="+", default=None, help="only these categories (default: all)")
    g.add_argument("--limit", type=cli.positive_int, default=None,
                   help="only the first N prompts of each category (default: all)")
    g.add_argument("--seeds", type=cli.seed_int, nargs="+", default=[33],
                   help="seeds to run for every prompt, 0 .. 2**64-1 (default: 33)")
    g = parser.add_argument_group("execution")
    g.add_argument("--result_root", default="results/evaluate", help="output folder (default: %(default)s)")
    g.add_argument("--batch_size", type=cli.positive_int, default=1,
                   help="(prompt, seed) pairs optimised at once on one device (default: %(default)s)")
    g.add_argument("--shard", type=shard_spec, default=None, metavar="INDEX/COUNT",
                   help="run only shard INDEX of COUNT (e.g. separate jobs on a cluster); under accelerate launch the "
                        "shard comes from the process rank and this is not needed")
    g.add_argument("--overwrite", action="store_true",
                   help="redo finished runs (default: skip them; damaged runs are always redone)")
    g.add_argument("--save_all_epochs", action="store_true", help="also save the image of every epoch")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g.add_argument("--eval_vqa_model", default=None,
                   help="held-out verifier that re-scores every saved initial and best image (default: none)")
    cli.add_model_and_search_args(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report:
        summary = write_report(args.report)
        print_overall(summary, args.report)
        return 0

    entries = load_dataset(args.dataset, args.categories, args.limit)
    search = cli.search_config(args, keep_epoch_images=args.save_all_epochs)
    jobs = make_jobs(entries, args.seeds)
    on_cpu = (args.device or "").startswith("cpu") or not torch.cuda.is_available()
    procs = processes(args.shard, cpu=on_cpu)
    mine = shard(jobs, procs.index, procs.count)
    root = Path(args.result_root)
    device = args.device or procs.device
    vqa_device = args.vqa_device or device
    progress = not args.quiet and (procs.is_main or procs.barrier is None)

    states = {}
    todo = pending_jobs(mine, root, search.method, args.overwrite, states=states)
    if not args.overwrite:
        check_settings(mine, root, search.method, expected_settings(args, search), states)
    damaged = [job for job in mine if states[job].status == "invalid"]
    if damaged:
        print(f"redoing {len(damaged)} damaged run{'s' if len(damaged) > 1 else ''}, e.g. "
              f"{states[damaged[0]].reason}", file=sys.stderr)
    # cheap checks of every model name before any weights are loaded
    for name in [device, vqa_device]:
        api.resolve_device(name)
    if todo:
        pipeline_class_name(resolve_model(args.sd_version))
        scorer_loader(args.vqa_model)
    if args.eval_vqa_model:
        scorer_loader(args.eval_vqa_model)
    check_writable(root)

    if todo:  # models are loaded only when there is something to generate
        generator = api.build_generator(
            args.sd_version, device, args.dtype, scheduler=args.scheduler, num_steps=args.num_denoising_steps,
            guidance_scale=args.guidance_scale, negative_prompt=args.negative_prompt, height=args.height,
            width=args.width, **cli.generator_options(args),
        )
        scorer = api.build_scorer(args.vqa_model, vqa_device, args.vqa_dtype, **cli.scorer_options(args))
        saved = run_jobs(todo, generator, scorer, search, root, batch_size=args.batch_size, overwrite=args.overwrite,
                         progress=progress, dataset={"name": args.dataset, "kind": dataset_kind(resolve(args.dataset))},
                         already_done=len(mine) - len(todo))
        del generator, scorer  # free the memory before the held-out verifier loads
        elsewhere = len(pending_jobs(todo, root, search.method))
        where = f" (shard {procs.index}/{procs.count})" if procs.count > 1 else ""
        print(f"{search.method}{where}: {saved} runs made here, {len(mine) - len(todo)} were already finished"
              + (f", {elsewhere} left to another process running them" if elsewhere else ""))

    folders = [job_folder(root, search.method, job) for job in mine]
    if args.eval_vqa_model and held_out_todo(folders, args.eval_vqa_model, args.overwrite):
        # the held-out verifier keeps its own question and answer: --vqa_question/--vqa_answer set the guide's
        held_out = api.build_scorer(args.eval_vqa_model, vqa_device, args.vqa_dtype)
        rescore_held_out(folders, held_out, args.eval_vqa_model, batch_size=args.batch_size,
                         overwrite=args.overwrite, progress=progress)

    procs.wait()  # under accelerate: every process has written its results
    if procs.barrier is not None or procs.count == 1:
        if procs.is_main:
            print_overall(write_report(root), root)
    elif pending_jobs(jobs, root, search.method):
        print(f"shard {procs.index}/{procs.count} done; the report is built when every shard has finished "
              f"(or: python evaluate.py --report {root})")
    else:
        print_overall(write_report(root), root)  # the last explicit shard to finish builds it
    return 0


def expected_settings(args: argparse.Namespace, search) -> dict:
    """What finished runs must have been made with to be kept: the search, the verifier, the model, and the sampling
    settings given on the command line (those left to the model's defaults are not compared)."""
    return settings_of_runs(search, args.vqa_model, cli.scorer_options(args), args.sd_version,
                            resolve_model(args.sd_version), args.num_denoising_steps, args.guidance_scale,
                            args.height, args.width, args.negative_prompt, args.scheduler, args.dtype)


def print_overall(summary: dict, root) -> None:
    for method, info in summary["methods"].items():
        s = info["categories"][OVERALL]
        print(f"{method}: {s['runs']} runs, mean score {s['mean_initial']:.4f} -> {s['mean_best']:.4f} "
              f"(gain {s['gain']:+.4f}), {s['unet_evals_per_run']:.0f} UNet evals/run")
    skipped = summary.get("skipped", [])
    if skipped:
        print(f"skipped {len(skipped)} damaged or misplaced entr{'ies' if len(skipped) > 1 else 'y'} "
              f"(listed in summary.md), e.g. {skipped[0]['reason']}", file=sys.stderr)
    print(f"report: {root}/summary.md")


if __name__ == "__main__":
    cli.main_guard(main)
