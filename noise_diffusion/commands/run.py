"""Noise Diffusion for one prompt: the most faithful image the search finds, saved with its scores.

Example (the paper's settings):
    python run.py --prompt "a book on the sofa" --seed 33 --sd_version CompVis/stable-diffusion-v1-4 \
        --vqa_model clip-flant5-xxl --num_candidate_noises 50 --num_denoising_steps 50 --max_epoch 50 \
        --device cuda:0 --result_root results
"""

from __future__ import annotations

from .startup import interruptible_start

with interruptible_start():  # the imports of a starting command
    from .. import api, cli


def parse_args(argv=None):
    parser = cli.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=lambda prog: cli.argparse.HelpFormatter(prog, max_help_position=32, width=110),
    )
    parser.add_argument("--prompt", required=True, help="text prompt to render faithfully")
    parser.add_argument("--seed", type=cli.seed_int, default=33, help="seed of the initial latent and the candidate noises "
                        "(0 .. 2**64-1, default: %(default)s)")
    parser.add_argument("--result_root", default="results",
                        help="results go to <result_root>/<prompt folder>/<seed>/ (default: %(default)s)")
    parser.add_argument("--save_all_epochs", action="store_true", help="also save the image of every epoch")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo a run whose result.json already exists (default: keep it and report it; a damaged "
                             "run is always redone)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--token_indices", type=cli.positive_int, nargs="+", default=None, metavar="N",
                        help="initno / attend_and_excite: token positions of the subjects (start token = 0), e.g. 2 5 "
                             "for 'a cat and a dog' (default: the last token of the word before the first relation "
                             "word, and of the prompt's last word)")
    cli.add_model_and_search_args(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.prompt.strip():
        raise api.UserError("the prompt is empty")
    result = api.run(
        args.prompt, args.seed, generator=cli.generator_spec(args), verifier=cli.verifier_spec(args),
        search=cli.search_config(args), result_root=args.result_root, save_all_epochs=args.save_all_epochs,
        overwrite=args.overwrite, progress=not args.quiet, token_indices=args.token_indices,
    )
    folder = api.run_folder(args.result_root, args.prompt, args.seed)
    prefix = "already finished (use --overwrite to redo): " if result.images is None else ""
    print(prefix + api.summary_line(result, folder))
    return 0


def console() -> None:
    """The ``noise-diffusion-run`` command."""
    cli.main_guard(main)
