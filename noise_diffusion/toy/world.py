"""The toy world: two handwritten digits on a 32x32 canvas, and prompts that say which digit is where.

Specification (other tools read it, so it is fixed):

- Digits come from ``sklearn.datasets.load_digits()`` (shipped inside scikit-learn), 8x8 values 0..16 scaled to [0, 1]
  and upsampled to 16x16 (bilinear), drawn white on black.
- A 32x32 canvas holds two digits. Layout ``H`` (side by side): the first digit's 16x16 box is rows 8-24, columns 0-16,
  the second's rows 8-24, columns 16-32. Layout ``V`` (stacked): rows 0-16 / 16-32, columns 8-24. Each digit is jittered
  by up to +-2 px in each direction (where jittered digits overlap, the brighter pixel wins). Canvases are RGB with
  three equal channels.
- Prompts: ``a A left of a B`` (H: A, B), ``a A right of a B`` (H: B, A), ``a A above a B`` (V: A, B),
  ``a A below a B`` (V: B, A) and ``a A and a B`` (any of the four), with A != B digits 0-9.
- 20% of the 180 (layout, first, second) configurations are held out of the generator's training: the four
  configurations of each of 9 of the 45 unordered digit pairs (9 x 4 = 36 = 20%), so a held-out pair never appears
  together in any training canvas and every prompt (spatial or ``and``) about it is a held-out combination.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from ..errors import UserError

CANVAS = 32
DIGIT = 16
JITTER = 2
LAYOUTS = ("H", "V")
RELATIONS = ("left of", "right of", "above", "below", "and")
#: (row, column) of the top-left corner of the first and the second digit's box
BOXES = {"H": ((8, 0), (8, 16)), "V": ((0, 8), (16, 8))}
HELD_OUT_FRACTION = 0.2
HELD_OUT_SEED = 0

_PROMPT = re.compile(r"^\s*an?\s+(\d)\s+(left of|right of|above|below|and)\s+an?\s+(\d)\s*$")


@dataclass(frozen=True)
class Parsed:
    """A toy prompt: its two digits as written and its relation."""

    a: int
    b: int
    relation: str

    def arrangements(self) -> list[tuple[str, int, int]]:
        """The (layout, first, second) configurations that make the prompt true."""
        a, b = self.a, self.b
        return {
            "left of": [("H", a, b)],
            "right of": [("H", b, a)],
            "above": [("V", a, b)],
            "below": [("V", b, a)],
            "and": [("H", a, b), ("H", b, a), ("V", a, b), ("V", b, a)],
        }[self.relation]


def parse_prompt(prompt: str) -> Parsed:
    """Parse ``a A <relation> a B``; raise :class:`UserError` for anything else."""
    match = _PROMPT.match(prompt.lower())
    if not match:
        raise UserError(f"not a toy-world prompt: {prompt!r} (expected e.g. 'a 3 left of a 7')")
    a, relation, b = int(match.group(1)), match.group(2), int(match.group(3))
    if a == b:
        raise UserError(f"toy-world prompt {prompt!r} names the same digit twice")
    return Parsed(a, b, relation)


def make_prompt(a: int, relation: str, b: int) -> str:
    return f"a {a} {relation} a {b}"


def prompts_for(layout: str, first: int, second: int) -> list[str]:
    """Every prompt that a canvas in configuration (layout, first, second) satisfies."""
    if layout == "H":
        spatial = [make_prompt(first, "left of", second), make_prompt(second, "right of", first)]
    else:
        spatial = [make_prompt(first, "above", second), make_prompt(second, "below", first)]
    return spatial + [make_prompt(first, "and", second), make_prompt(second, "and", first)]


def configurations() -> list[tuple[str, int, int]]:
    """All 180 (layout, first, second) configurations."""
    return [(layout, a, b) for layout in LAYOUTS for a in range(10) for b in range(10) if a != b]


@lru_cache(maxsize=None)
def held_out_pairs(seed: int = HELD_OUT_SEED) -> frozenset[tuple[int, int]]:
    """The unordered digit pairs (low, high) whose four configurations are held out (9 of 45)."""
    pairs = list(itertools.combinations(range(10), 2))
    rng = np.random.default_rng(seed)
    count = round(HELD_OUT_FRACTION * len(pairs))
    while True:  # every digit in at most two held-out pairs, so no digit is mostly unseen in company
        chosen = [pairs[i] for i in rng.choice(len(pairs), size=count, replace=False)]
        if max(np.bincount(np.ravel(chosen), minlength=10)) <= 2:
            return frozenset(sorted(chosen))


def is_held_out_config(layout: str, first: int, second: int) -> bool:
    return (min(first, second), max(first, second)) in held_out_pairs()


def held_out_configurations() -> list[tuple[str, int, int]]:
    return [c for c in configurations() if is_held_out_config(*c)]


def training_configurations() -> list[tuple[str, int, int]]:
    return [c for c in configurations() if not is_held_out_config(*c)]


def is_held_out_prompt(prompt: str) -> bool:
    """True when every configuration that satisfies the prompt was held out of training."""
    return all(is_held_out_config(*c) for c in parse_prompt(prompt).arrangements())


# -- digits and canvases ------------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _all_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    small = torch.from_numpy(data.images.astype(np.float32) / 16.0)[:, None]
    big = torch.nn.functional.interpolate(small, size=(DIGIT, DIGIT), mode="bilinear", align_corners=False)
    return big[:, 0].clamp(0, 1).numpy(), data.target.astype(np.int64)


def digits(half: str = "all") -> tuple[np.ndarray, np.ndarray]:
    """16x16 digit images in [0, 1] and their labels: ``"all"``, ``"a"`` (even indices) or ``"b"`` (odd indices).

    The guiding verifier is trained on half ``a`` and the held-out verifier on half ``b``.
    """
    images, labels = _all_digits()
    if half == "all":
        return images, labels
    if half not in ("a", "b"):
        raise ValueError(f"half must be 'all', 'a' or 'b', got {half!r}")
    start = 0 if half == "a" else 1
    return images[start::2], labels[start::2]


def render(layout: str, first_image: np.ndarray, second_image: np.ndarray, jitter: tuple[int, int, int, int]) -> np.ndarray:
    """One 32x32 grey canvas: two 16x16 digit images in the layout's boxes, shifted by (dy1, dx1, dy2, dx2)."""
    canvas = np.zeros((CANVAS, CANVAS), dtype=np.float32)
    for (top, left), image, (dy, dx) in zip(BOXES[layout], (first_image, second_image), (jitter[:2], jitter[2:])):
        r0, c0 = top + dy, left + dx
        # clip the shifted box to the canvas
        rs, cs = max(r0, 0), max(c0, 0)
        re_, ce = min(r0 + DIGIT, CANVAS), min(c0 + DIGIT, CANVAS)
        patch = image[rs - r0 : re_ - r0, cs - c0 : ce - c0]
        np.maximum(canvas[rs:re_, cs:ce], patch, out=canvas[rs:re_, cs:ce])
    return canvas


def sample_canvases(
    configs: list[tuple[str, int, int]], rng: np.random.Generator, half: str = "all", jitter: int = JITTER
) -> np.ndarray:
    """Canvases ``[N, 3, 32, 32]`` in [0, 1] for the given configurations, with random digit instances and jitter."""
    images, labels = digits(half)
    by_label = [np.flatnonzero(labels == d) for d in range(10)]
    out = np.empty((len(configs), 3, CANVAS, CANVAS), dtype=np.float32)
    for i, (layout, first, second) in enumerate(configs):
        a = images[rng.choice(by_label[first])]
        b = images[rng.choice(by_label[second])]
        shift = tuple(int(s) for s in rng.integers(-jitter, jitter + 1, size=4))
        out[i] = render(layout, a, b, shift)[None]
    return out


def sample_training_set(count: int, seed: int, cfg_dropout: float = 0.0) -> tuple[np.ndarray, list[str]]:
    """``count`` canvases from the training configurations with one true prompt each (``""`` at rate ``cfg_dropout``)."""
    rng = np.random.default_rng(seed)
    train = training_configurations()
    configs = [train[i] for i in rng.integers(0, len(train), size=count)]
    canvases = sample_canvases(configs, rng)
    prompts = []
    for config in configs:
        options = prompts_for(*config)
        prompts.append("" if rng.random() < cfg_dropout else options[rng.integers(0, len(options))])
    return canvases, prompts


# -- datasets in the project's JSON format -----------------------------------------------------------------------------
def _entry(prompt: str) -> dict:
    # indices: token positions of the two digits after the start token, as the authors' files mark the objects
    # ("a 3 left of a 7" -> [2, 7]; every toy word is one token)
    words = prompt.split()
    return {"prompt": prompt, "indices": [2, len(words)], "held_out": is_held_out_prompt(prompt)}


def simple_dataset() -> dict[str, list[dict]]:
    """The ``and`` prompts (one per unordered pair, smaller digit first), as category -> entries."""
    entries = [_entry(make_prompt(a, "and", b)) for a, b in itertools.combinations(range(10), 2)]
    return {"toy_and": entries}


def complex_dataset() -> list[dict]:
    """The spatial-relation prompts: every ordered pair with each of the four relations (360 prompts)."""
    return [
        _entry(make_prompt(a, relation, b))
        for relation in RELATIONS[:4]
        for a in range(10)
        for b in range(10)
        if a != b
    ]


def write_datasets(folder) -> list:
    """Write ``toy_simple.json`` and ``toy_complex.json`` into ``folder`` (the shipped ones live in ``datasets/``)."""
    import json
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    def lines(entries: list[dict], indent: str) -> str:  # one entry per line, like the authors' files
        return ",\n".join(indent + json.dumps(e) for e in entries)

    simple = "{\n" + ",\n".join(
        f'  {json.dumps(k)}: [\n{lines(v, "    ")}\n  ]' for k, v in simple_dataset().items()
    ) + "\n}\n"
    complex_ = "[\n" + lines(complex_dataset(), "  ") + "\n]\n"
    for name, text in (("toy_simple.json", simple), ("toy_complex.json", complex_)):
        path = folder / name
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


def main(argv=None) -> int:
    """``python -m noise_diffusion.toy.world [--out DIR]``: regenerate the shipped toy sets where they live."""
    import argparse

    from ..datasets import DATASET_DIR

    parser = argparse.ArgumentParser(prog="python -m noise_diffusion.toy.world",
                                     description="Regenerate the toy world's prompt sets, toy_simple.json and "
                                                 "toy_complex.json, from the world's specification.")
    parser.add_argument("--out", default=str(DATASET_DIR),
                        help="output folder (default: where the shipped sets live, %(default)s)")
    args = parser.parse_args(argv)
    print(*write_datasets(args.out), sep="\n")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
