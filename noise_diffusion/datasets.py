"""Prompt datasets: the project's own two sets (built after Attend-and-Excite's construction), how they are built,
the shipped and downloadable sets by name, and a loader for every supported format.

Formats the loader reads as they are:

- the authors' simple set: a JSON object mapping category -> list of ``{"prompt": str, "indices": [int, int]}``;
- the authors' complex set: a JSON list of such entries (one category, named after the file: ``complex``);
- a JSON list (or category -> list) of plain prompt strings;
- a text file with one prompt per line (blank lines and lines starting with ``#`` are skipped).

``indices`` are the positions of the two subject words in the CLIP tokenisation with the start token at 0 (used by
attention-based methods such as InitNO). We compute them with a word-level rule, position = word number (1-based),
assuming that CLIP's BPE keeps each of these short lowercase vocabulary words as one token. That holds for every word
used here (they are all whole words in CLIP's 49k vocabulary) and agrees with the authors' files, e.g. "a dog and a
frog" -> [2, 5] and "a pink crown and a purple bow" -> [3, 7].

The shipped sets live in ``datasets/`` at the top of the repository; ``pip install`` puts that folder into the package
as ``noise_diffusion/data`` (see pyproject.toml), so they resolve by name from a checkout and from an installation.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any, Sequence

from .errors import UserError

_PACKAGE = Path(__file__).resolve().parent
#: Folder of the shipped prompt sets: ``noise_diffusion/data`` when installed, else ``datasets/`` of the checkout.
DATASET_DIR = _PACKAGE / "data" if (_PACKAGE / "data").is_dir() else _PACKAGE.parent / "datasets"
#: The project's own sets (``pairs``, ``relations``) and the toy world's, by name.
BUILTIN = {
    "pairs": "pairs.json",
    "relations": "relations.json",
    "toy-simple": "toy_simple.json",
    "toy-complex": "toy_complex.json",
}
#: Names the project's own sets once had, which read as the authors' files: each now names the choice to make.
RENAMED = {
    "simple": "'pairs' (the project's own two-subject set) or 'paper-simple' (the authors' simple_cases.json)",
    "complex": "'relations' (the project's own spatial-relation set) or 'paper-complex' (the authors' "
               "complex_cases.json)",
}
#: The authors' file names, which mark a copy of their sets (the report prints the paper's numbers beside it).
AUTHORS_FILE_NAMES = {"simple": "simple_cases.json", "complex": "complex_cases.json"}

# Attend-and-Excite's vocabulary (the objects, animals and colours of its prompt sets).
ANIMALS = ("bear", "bird", "cat", "dog", "elephant", "frog", "horse", "lion", "monkey", "mouse", "rabbit", "turtle")
OBJECTS = ("apple", "backpack", "balloon", "bench", "bow", "bowl", "car", "chair", "clock", "crown", "glasses",
           "suitcase")
COLOURS = ("black", "blue", "brown", "gray", "green", "orange", "pink", "purple", "red", "white", "yellow")
WEARABLES = ("bow", "crown", "glasses")
#: Spatial relations of the complex set and how many prompts use each (100 in all).
RELATIONS = {"under": 42, "on": 27, "below": 17, "above": 14}
#: Pair types of the complex set and their counts.
COMPLEX_PAIRS = {"animal-animal": 33, "animal-object": 33, "object-object": 34}


@dataclass(frozen=True)
class PromptEntry:
    """One prompt of a dataset, with its category and (when known) the token positions of its two subjects."""

    prompt: str
    category: str
    indices: tuple[int, ...] | None = None


# --------------------------------------------------------------------------------------------------- construction

def article(word: str) -> str:
    """'an' before a vowel, 'a' otherwise (by spelling, as the authors' files: "a glasses", "an orange bench")."""
    return "an" if word[0] in "aeiou" else "a"


def noun_phrase(noun: str, colour: str | None = None) -> str:
    words = f"{colour} {noun}" if colour else noun
    return f"{article(words)} {words}"


def subject_indices(prompt: str, subjects: Sequence[str]) -> list[int]:
    """Token positions of ``subjects`` in ``prompt`` (start token at 0, one token per word; see the module doc)."""
    words = prompt.split()
    positions, start = [], 0
    for subject in subjects:
        at = words.index(subject, start)
        positions.append(at + 1)
        start = at + 1
    return positions


def _entry(prompt: str, first: str, second: str) -> dict:
    return {"prompt": prompt, "indices": subject_indices(prompt, [first, second])}


def build_simple(seed: int = 0) -> dict[str, list[dict]]:
    """The simple set (Attend-and-Excite's construction): animals 66, animals_objects 144, objects 66."""
    rng = random.Random(seed)
    animals = [_entry(f"{noun_phrase(a)} and {noun_phrase(b)}", a, b) for a, b in combinations(ANIMALS, 2)]
    animals_objects = []
    for a in ANIMALS:
        for o in OBJECTS:
            if o in WEARABLES:
                animals_objects.append(_entry(f"{noun_phrase(a)} with {noun_phrase(o)}", a, o))
            else:
                animals_objects.append(_entry(f"{noun_phrase(a)} and {noun_phrase(o, rng.choice(COLOURS))}", a, o))
    objects = []
    for o1, o2 in combinations(OBJECTS, 2):
        c1, c2 = rng.choice(COLOURS), rng.choice(COLOURS)
        objects.append(_entry(f"{noun_phrase(o1, c1)} and {noun_phrase(o2, c2)}", o1, o2))
    return {"animals": animals, "animals_objects": animals_objects, "objects": objects}


def build_complex(seed: int = 0) -> list[dict]:
    """The complex set: 100 two-subject prompts joined by a spatial relation instead of and/with.

    33 animal-animal, 33 animal-object, 34 object-object pairs (distinct ordered pairs drawn at random), relations
    under 42 / on 27 / below 17 / above 14 assigned at random; objects get a random colour except the wearables
    after an animal (as in the simple set).
    """
    rng = random.Random(seed)
    relations = [r for r, count in RELATIONS.items() for _ in range(count)]
    rng.shuffle(relations)
    pools = {
        "animal-animal": [(a, b) for a in ANIMALS for b in ANIMALS if a != b],
        "animal-object": [(a, o) for a in ANIMALS for o in OBJECTS],
        "object-object": [(a, b) for a in OBJECTS for b in OBJECTS if a != b],
    }
    entries = []
    for kind, count in COMPLEX_PAIRS.items():
        for first, second in rng.sample(pools[kind], count):
            relation = relations[len(entries)]
            if kind == "animal-animal":
                left, right = noun_phrase(first), noun_phrase(second)
            elif kind == "animal-object":
                left = noun_phrase(first)
                right = noun_phrase(second, None if second in WEARABLES else rng.choice(COLOURS))
            else:
                left, right = noun_phrase(first, rng.choice(COLOURS)), noun_phrase(second, rng.choice(COLOURS))
            entries.append(_entry(f"{left} {relation} {right}", first, second))
    return entries


# -------------------------------------------------------------------------------------------------------- loading

def resolve(name_or_path: str) -> Path:
    """A shipped set (:data:`BUILTIN`), a downloadable one (``paper-simple``, ``paper-complex``: the authors' files, see
    :mod:`noise_diffusion.paper_datasets`; ``t2i-compbench[-<split>]``, see :mod:`noise_diffusion.compbench`), or a
    path to a dataset file."""
    from .compbench import NAMES as COMPBENCH_NAMES, compbench_dataset
    from .paper_datasets import PAPER_FILES, paper_dataset

    if name_or_path in PAPER_FILES:
        return paper_dataset(name_or_path)
    if name_or_path in COMPBENCH_NAMES:
        return compbench_dataset(name_or_path)
    if name_or_path in BUILTIN:
        path = DATASET_DIR / BUILTIN[name_or_path]
        if not path.is_file():
            raise UserError(f"built-in dataset {name_or_path!r} not found at {path} (run scripts/make_datasets.py)")
        return path
    path = Path(name_or_path)
    if not path.is_file():
        if name_or_path in RENAMED:
            raise UserError(f"there is no dataset {name_or_path!r}: choose {RENAMED[name_or_path]}")
        raise UserError(f"dataset {name_or_path!r} is neither a file nor a known name "
                        f"({', '.join([*BUILTIN, *PAPER_FILES, *COMPBENCH_NAMES])})")
    return path


def dataset_kind(path: str | os.PathLike) -> str | None:
    """``simple`` / ``complex`` when the file is (a copy of) one of the paper's sets, judged by its file name."""
    name = Path(path).name
    return next((kind for kind, file_name in AUTHORS_FILE_NAMES.items() if name == file_name), None)


def load_dataset(
    name_or_path: str, categories: Sequence[str] | None = None, limit: int | None = None
) -> list[PromptEntry]:
    """Read a dataset; keep only ``categories`` (all when None) and the first ``limit`` prompts of each category."""
    path = resolve(name_or_path)
    entries = read_entries(path)
    known = list(dict.fromkeys(e.category for e in entries))
    if categories:
        unknown = [c for c in categories if c not in known]
        if unknown:
            raise UserError(f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))} "
                            f"in {path}; known: {', '.join(known)}")
        entries = [e for e in entries if e.category in set(categories)]
    if limit is not None:
        if limit < 1:
            raise UserError(f"limit must be >= 1, got {limit}")
        kept, seen = [], {}
        for entry in entries:
            seen[entry.category] = seen.get(entry.category, 0) + 1
            if seen[entry.category] <= limit:
                kept.append(entry)
        entries = kept
    return entries


def read_entries(path: str | os.PathLike) -> list[PromptEntry]:
    """Every entry of a dataset file, validated; :class:`UserError` naming the file, entry and problem otherwise."""
    path = Path(path)
    default_category = path.stem.removesuffix("_cases") or "prompts"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text ({error.reason})") from error
    if path.suffix.lower() != ".json":
        entries = [PromptEntry(line.strip(), default_category) for line in text.splitlines()
                   if line.strip() and not line.lstrip().startswith("#")]
        if not entries:
            raise UserError(f"{path}: no prompts (one prompt per line expected)")
        return entries
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})") from error
    except RecursionError:
        raise UserError(f"{path}: JSON nested too deeply for a prompt dataset") from None
    return parse_entries(data, str(path), default_category)


def parse_entries(data: Any, source: str, default_category: str = "prompts") -> list[PromptEntry]:
    """Entries from parsed JSON: category -> list, or a list; each item a prompt string or ``{"prompt", "indices"}``."""
    if isinstance(data, list):
        groups = {default_category: data}
    elif isinstance(data, dict):
        groups = data
        for category, items in groups.items():
            if not isinstance(items, list):
                raise UserError(f"{source}: category {category!r} must map to a list of entries, "
                                f"got {type(items).__name__}")
    else:
        raise UserError(f"{source}: expected a list of prompts or an object mapping category -> list, "
                        f"got {type(data).__name__}")
    entries = []
    for category, items in groups.items():
        for index, item in enumerate(items):
            entries.append(_parse_item(item, category, f"{source}: entry {index} of {category!r}"))
    if not entries:
        raise UserError(f"{source}: no prompts")
    return entries


def _parse_item(item: Any, category: str, where: str) -> PromptEntry:
    if isinstance(item, str):
        prompt, indices = item, None
    elif isinstance(item, dict):
        if "prompt" not in item:
            raise UserError(f"{where}: missing 'prompt'")
        prompt, indices = item["prompt"], item.get("indices")
        if indices is not None:
            if not isinstance(indices, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                                        for i in indices):
                raise UserError(f"{where}: 'indices' must be a list of non-negative integers, got {indices!r}")
            indices = tuple(indices)
    else:
        raise UserError(f"{where}: expected a prompt string or an object with 'prompt', got {type(item).__name__}")
    if not isinstance(prompt, str):
        raise UserError(f"{where}: 'prompt' must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise UserError(f"{where}: the prompt is empty")
    return PromptEntry(prompt.strip(), category, indices)
