"""Run search methods over a prompt dataset and several seeds, then report scores, compute, image grids and curves.

Examples:
    python evaluate.py --dataset pairs --seeds 33 --method noise_diffusion --result_root results/pairs
    python evaluate.py --dataset paper-complex --methods none initno noise_diffusion --seeds paper  # the paper's table
    python evaluate.py --dataset t2i-compbench-spatial --methods none initno noise_diffusion --seeds paper --result_root results/t2i-compbench-spatial
    python evaluate.py --dataset relations --method best_of_n --result_root results/relations  # same generations
    accelerate launch evaluate.py --dataset pairs --result_root results/pairs                 # one shard per GPU
    python evaluate.py --report results/pairs                                                 # report only

Results go to <result_root>/<method>/<prompt folder>/<seed>/ (the layout of run.py); a re-run skips finished runs.
"""

from __future__ import annotations

import argparse
import sys

from .startup import interruptible_start

with interruptible_start():  # the imports of a starting command
    from .. import cli
    from ..catalogue import CATALOGUE, catalogue_lines
    from ..evaluation import evaluate
    from ..methods import METHODS
    from ..paper_table import paper_table
    from ..report import OVERALL, write_report


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
        epilog=__doc__.split("\n\n", 1)[1] + DATASETS_EPILOG,
    )
    parser.add_argument("--report", metavar="DIR", default=None,
                        help="only rebuild the report from the finished results in DIR (no generation)")
    g = parser.add_argument_group("prompts and seeds")
    g.add_argument("--dataset", default="pairs",
                   help=f"a prompt set by name ({', '.join(info.name for info in CATALOGUE)}: listed below with "
                        "their size, source and licence; the downloaded ones are fetched once from a pinned commit, "
                        "checked against their SHA-256 and cached), or a file: the authors' JSON format, a JSON list "
                        "of prompts, or a text file with one prompt per line (default: %(default)s)")
    g.add_argument("--categories", nargs="+", default=None, help="only these categories (default: all)")
    g.add_argument("--limit", type=cli.positive_int, default=None,
                   help="only the first N prompts of each category (default: all)")
    g.add_argument("--seeds", type=cli.seed_or_paper, nargs="+", default=[33], metavar="SEED",
                   help="seeds to run for every prompt, 0 .. 2**64-1; 'paper' = the authors' research-code seeds "
                        f"{' '.join(map(str, cli.PAPER_SEEDS))} (default: 33)")
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
    g.add_argument("--no_png_rescore", action="store_true",
                   help="do not re-score the saved images with the guiding verifier (by default every method's "
                        "initial and best PNG is scored again through PIL, so all rows are scored the same way)")
    cli.add_model_and_search_args(parser)
    g = parser.add_argument_group("several methods")
    g.add_argument("--methods", nargs="+", choices=tuple(METHODS), default=None, metavar="METHOD",
                   help="run these methods one after another with the models loaded once (replaces --method), e.g. "
                        "none initno noise_diffusion for the paper's table")
    return parser.parse_args(argv)


DATASETS_EPILOG = ("\nPrompt sets by name (--dataset NAME), with their number of prompts; docs/datasets.md has more:\n"
                   + "\n".join(catalogue_lines()) + "\n")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report is not None:
        summary = write_report(args.report)
        print_overall(summary, args.report)
        return 0

    searches = [cli.search_config(args, keep_epoch_images=args.save_all_epochs, method=method)
                for method in dict.fromkeys(args.methods or [args.method])]
    summary = evaluate(
        args.dataset, cli.seed_list(args.seeds), searches, cli.generator_spec(args), cli.verifier_spec(args),
        args.result_root, categories=args.categories, limit=args.limit, batch_size=args.batch_size,
        shard_of=args.shard, overwrite=args.overwrite, held_out=args.eval_vqa_model,
        png_rescore=not args.no_png_rescore, progress=not args.quiet,
    )
    if summary is not None:
        print_overall(summary, args.result_root)
    return 0


def print_overall(summary: dict, root) -> None:
    for method, info in summary["methods"].items():
        s = info["categories"][OVERALL]
        print(f"{method}: {s['runs']} runs, mean score {s['mean_initial']:.4f} -> {s['mean_best']:.4f} "
              f"(gain {s['gain']:+.4f}), {s['model_evals_per_run']:.0f} model evals/run")
    skipped = summary.get("skipped", [])
    if skipped:
        print(f"skipped {len(skipped)} damaged or misplaced folder{'s' if len(skipped) > 1 else ''} "
              f"(listed in summary.md), e.g. {skipped[0]['reason']}", file=sys.stderr)
    table = paper_table(summary)
    if table:
        print("\n".join(table[2:]).rstrip())  # the paper-shaped table (without its heading)
    print(f"report: {root}/summary.md")


def console() -> None:
    """The ``noise-diffusion-evaluate`` command."""
    cli.main_guard(main)
