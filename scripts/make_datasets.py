#!/usr/bin/env python
"""Write the project's own two prompt sets, datasets/pairs.json and datasets/relations.json.

They follow Attend-and-Excite's construction (the paper's simple and complex sets are built the same way, but these
are not the authors' files: those are --dataset paper-simple and paper-complex). The construction lives in
noise_diffusion.datasets (build_simple, build_complex); the seed fixes the random colours, pairs and relations, so the
files are reproducible:  python scripts/make_datasets.py [--seed 0] [--out datasets]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from noise_diffusion.datasets import BUILTIN, DATASET_DIR, build_complex, build_simple  # noqa: E402


def dump(data) -> str:
    """One entry per line, in the authors' layout (an object of lists for pairs, a list for relations)."""
    def line(entry):
        return json.dumps(entry, ensure_ascii=False)

    if isinstance(data, dict):
        blocks = [f"  {json.dumps(k)}: [\n" + ",\n".join(f"    {line(e)}" for e in v) + "\n  ]" for k, v in data.items()]
        return "{\n" + ",\n".join(blocks) + "\n}\n"
    return "[\n" + ",\n".join(f"  {line(e)}" for e in data) + "\n]\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the random choices (default: %(default)s)")
    parser.add_argument("--out", default=str(DATASET_DIR),
                        help="output folder (default: where the shipped sets live, datasets/ in a checkout)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in (("pairs", build_simple(args.seed)), ("relations", build_complex(args.seed))):
        path = out / BUILTIN[name]
        path.write_text(dump(data), encoding="utf-8")
        count = sum(map(len, data.values())) if isinstance(data, dict) else len(data)
        print(f"{path}: {count} prompts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
