"""Every prompt set known by name: size, source, licence and what it tests (for ``--dataset`` help and the docs).

The counts are those of the files (tests/test_datasets.py checks the shipped ones; the downloadable ones are fixed by
their SHA-256). docs/datasets.md holds the same table with the share of prompts whose subjects the word rule finds.
"""

from __future__ import annotations

from dataclasses import dataclass

from .compbench import COMPBENCH_FILES, PREFIX, PROMPTS_PER_SPLIT, SPLITS


@dataclass(frozen=True)
class Source:
    description: str
    licence: str


OURS = Source("this project's own, shipped in datasets/", "MIT licence, this project")
PAPER = Source("the Noise Diffusion authors' files, downloaded once from a pinned commit", "MIT licence, the authors")
COMPBENCH = Source("T2I-CompBench's validation splits, downloaded once from a pinned commit", "MIT licence, 2023 HKU")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    prompts: int
    source: Source
    tests: str


COMPBENCH_TESTS = {
    "color": "attribute binding, colours: 'a red book and a blue bowl'",
    "shape": "attribute binding, shapes: 'an oval mirror and a rectangular painting'",
    "texture": "attribute binding, textures: 'a metallic fork and a wooden desk'",
    "spatial": "spatial relations: 'a cup on the right of a dog'",
    "non_spatial": "actions in free sentences: 'A man is holding a book and ...'",
    "complex": "several objects, attributes and relations in one free sentence",
}

CATALOGUE: tuple[DatasetInfo, ...] = (
    DatasetInfo("pairs", 276, OURS, "two subjects joined by and/with, after Attend-and-Excite's construction"),
    DatasetInfo("relations", 100, OURS, "two subjects joined by a spatial relation (under, on, below, above)"),
    DatasetInfo("toy-simple", 45, OURS, "the toy world: two digits joined by 'and'"),
    DatasetInfo("toy-complex", 360, OURS, "the toy world: two digits in a spatial relation"),
    DatasetInfo("paper-simple", 276, PAPER, "the paper's simple set: animals, animals_objects, objects"),
    DatasetInfo("paper-complex", 100, PAPER, "the paper's complex set: two subjects in a spatial relation"),
    *(DatasetInfo(name, PROMPTS_PER_SPLIT, COMPBENCH, COMPBENCH_TESTS[name[len(PREFIX) + 1:]])
      for name in COMPBENCH_FILES),
    DatasetInfo(PREFIX, PROMPTS_PER_SPLIT * len(SPLITS), COMPBENCH, "all six splits, one category each"),
)


def catalogue_lines() -> list[str]:
    """The sets grouped by source: a heading line with source and licence, then one line per set."""
    width = max(len(info.name) for info in CATALOGUE)
    lines, source = [], None
    for info in CATALOGUE:
        if info.source is not source:
            source = info.source
            lines.append(f"  {source.description} ({source.licence}):")
        lines.append(f"    {info.name:<{width}} {info.prompts:>5}  {info.tests}")
    return lines
