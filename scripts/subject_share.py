#!/usr/bin/env python
"""Measure, per category of a prompt set, the share of prompts in which the subject-word rule finds two subjects.

The rule (noise_diffusion/baselines/tokens.py) gives the attention baselines (InitNO, Attend-and-Excite) the two
subject tokens of a prompt that has no ``indices``. ``--sample N`` also prints N prompts per category (drawn with
``--seed``) with the two words found, for checking by hand:

    python scripts/subject_share.py t2i-compbench --sample 20 --seed 7
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from noise_diffusion.baselines.tokens import subject_words, word_list  # noqa: E402
from noise_diffusion.datasets import load_dataset  # noqa: E402
from noise_diffusion.errors import UserError  # noqa: E402


def found_words(prompt: str) -> tuple[str, str] | None:
    try:
        first, second = subject_words(prompt)
    except UserError:
        return None
    words = word_list(prompt)
    return words[first], words[second]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("datasets", nargs="+", help="dataset names or files, as for evaluate.py --dataset")
    parser.add_argument("--sample", type=int, default=0, help="prompts per category to print for a check by hand")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample (default: %(default)s)")
    args = parser.parse_args(argv)
    for dataset in args.datasets:
        by_category: dict[str, list] = {}
        for entry in load_dataset(dataset):
            by_category.setdefault(entry.category, []).append((entry.prompt, found_words(entry.prompt)))
        for category, items in by_category.items():
            found = sum(words is not None for _, words in items)
            print(f"{dataset} / {category}: {found} of {len(items)} ({100 * found / len(items):.1f} %) with two "
                  f"subjects found")
            rng = random.Random(args.seed)
            for prompt, words in rng.sample(items, min(args.sample, len(items))):
                print(f"    {' | '.join(words) if words else '(none)':<28} {prompt}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
