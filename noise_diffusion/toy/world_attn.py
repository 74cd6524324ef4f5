"""The attention toy world ``toy-digits-attn``: the canvas and language of :mod:`.world`, with ambiguous training scenes.

Specification (fixed; ``docs/toy_world.md``, section "The attention world"):

- Canvas, digits, boxes, jitter and prompts are those of :mod:`.world` (so its verifiers judge this world unchanged).
- Held-out combinations: the ten unordered digit pairs of :func:`held_out_pairs` (the nine of :mod:`.world` and the
  one pair, {1, 5}, that keeps every digit in exactly two of them); their 40 configurations never appear in training.
- Training scenes are ambiguous the way captioned photographs are: in a share :data:`AMBIGUOUS` of the canvases one of
  the two digits (either, at random) is drawn **faint** (ink x 0.1-0.35), **small** (scaled to 0.4-0.6 of its size,
  anywhere in its box) or **overlapped** (pushed 7-11 px towards the other digit, so the two tangle), while the prompt
  still names both. A model trained on them may therefore draw one digit weakly or not at all: the "neglect" of the
  paper's simple set. Nothing of this happens at sampling time; it is only in the data.
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np
import torch

from . import world

#: share of training canvases with one ambiguous digit
AMBIGUOUS = 0.3
AMBIGUITY_KINDS = ("faint", "small", "overlapped")


@lru_cache(maxsize=1)
def held_out_pairs() -> frozenset[tuple[int, int]]:
    """:func:`world.held_out_pairs` plus the pairs that bring every digit up to two held-out pairs (here {1, 5})."""
    pairs = set(world.held_out_pairs())
    counts = np.bincount(np.ravel(sorted(pairs)), minlength=10)
    short = [d for d in range(10) if counts[d] < 2]
    while len(short) >= 2:
        a, b = short[0], short[1]
        pairs.add((a, b))
        counts[a] += 1
        counts[b] += 1
        short = [d for d in range(10) if counts[d] < 2]
    return frozenset(sorted(pairs))


def is_held_out_config(layout: str, first: int, second: int) -> bool:
    return (min(first, second), max(first, second)) in held_out_pairs()


def training_configurations() -> list[tuple[str, int, int]]:
    return [c for c in world.configurations() if not is_held_out_config(*c)]


def is_held_out_prompt(prompt: str) -> bool:
    return all(is_held_out_config(*c) for c in world.parse_prompt(prompt).arrangements())


# -- ambiguous canvases -------------------------------------------------------------------------------------------------
def _resize(image: np.ndarray, size: int) -> np.ndarray:
    small = torch.nn.functional.interpolate(torch.from_numpy(image)[None, None], size=(size, size), mode="bilinear",
                                            align_corners=False, antialias=True)
    return small[0, 0].clamp(0, 1).numpy()


def ambiguous_render(layout: str, images: tuple[np.ndarray, np.ndarray], shift: tuple[int, int, int, int],
                     slot: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """A canvas of :func:`world.render` whose digit ``slot`` (0 first, 1 second) is drawn faint, small or overlapped."""
    images = [images[0].copy(), images[1].copy()]
    shift = list(shift)
    if kind == "faint":
        images[slot] = images[slot] * rng.uniform(0.1, 0.35)
    elif kind == "small":
        size = int(round(world.DIGIT * rng.uniform(0.4, 0.6)))
        patch = np.zeros((world.DIGIT, world.DIGIT), np.float32)
        top, left = rng.integers(0, world.DIGIT - size + 1, size=2)
        patch[top:top + size, left:left + size] = _resize(images[slot], size)
        images[slot] = patch
    elif kind == "overlapped":  # towards the other digit along the layout's axis
        axis = 1 if layout == "H" else 0
        towards = 1 if slot == 0 else -1
        shift[2 * slot + axis] += towards * int(rng.integers(7, 12))
    else:
        raise ValueError(f"unknown ambiguity {kind!r}")
    return world.render(layout, images[0], images[1], tuple(shift))


def sample_canvases(configs: list[tuple[str, int, int]], rng: np.random.Generator,
                    ambiguous: float = AMBIGUOUS) -> tuple[np.ndarray, list[str]]:
    """Canvases ``[N, 3, 32, 32]`` for ``configs``, a share ``ambiguous`` with one ambiguous digit, and the kind of
    each (``""`` for a clear scene)."""
    images, labels = world.digits()
    by_label = [np.flatnonzero(labels == d) for d in range(10)]
    out = np.empty((len(configs), 3, world.CANVAS, world.CANVAS), dtype=np.float32)
    kinds = []
    for i, (layout, first, second) in enumerate(configs):
        pair = (images[rng.choice(by_label[first])], images[rng.choice(by_label[second])])
        shift = tuple(int(s) for s in rng.integers(-world.JITTER, world.JITTER + 1, size=4))
        kind = ""
        if rng.random() < ambiguous:
            kind = AMBIGUITY_KINDS[rng.integers(len(AMBIGUITY_KINDS))]
            canvas = ambiguous_render(layout, pair, shift, int(rng.integers(2)), kind, rng)
        else:
            canvas = world.render(layout, *pair, shift)
        out[i] = canvas[None]
        kinds.append(kind)
    return out, kinds


def sample_training_configurations(count: int, rng: np.random.Generator) -> list[tuple[str, int, int]]:
    train = training_configurations()
    return [train[i] for i in rng.integers(0, len(train), size=count)]


# -- prompt sets --------------------------------------------------------------------------------------------------------
def _entry(prompt: str) -> dict:
    # indices: token positions of the two digits (start token = 0), as in the authors' files
    return {"prompt": prompt, "indices": [2, len(prompt.split())], "held_out": is_held_out_prompt(prompt)}


def existence_prompts() -> list[str]:
    """``a A and a B`` for every ordered pair (90 prompts)."""
    return [world.make_prompt(a, "and", b) for a, b in itertools.permutations(range(10), 2)]


def spatial_prompts() -> list[str]:
    """Every ordered pair with each of the four relations (360 prompts)."""
    return [world.make_prompt(a, r, b) for r in world.RELATIONS[:4] for a in range(10) for b in range(10) if a != b]


def write_datasets(folder) -> list:
    """``toy_attn_simple.json`` (existence, category ``toy_and``) and ``toy_attn_complex.json`` (spatial)."""
    import json
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def lines(prompts: list[str], indent: str) -> str:  # one entry per line, like the authors' files
        return ",\n".join(indent + json.dumps(_entry(p)) for p in prompts)

    texts = {
        "toy_attn_simple.json": '{\n  "toy_and": [\n' + lines(existence_prompts(), "    ") + "\n  ]\n}\n",
        "toy_attn_complex.json": "[\n" + lines(spatial_prompts(), "  ") + "\n]\n",
    }
    paths = []
    for name, text in texts.items():
        path = folder / name
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


if __name__ == "__main__":  # python -m noise_diffusion.toy.world_attn [folder]
    import sys

    print(*write_datasets(sys.argv[1] if len(sys.argv) > 1 else "datasets"), sep="\n")
