"""Every prompt set known by name: size, source, licence and what it tests (for ``--dataset`` help and the docs).

The counts are those of the files (tests/test_datasets.py checks the shipped ones; the downloadable ones are fixed by
their SHA-256). docs/datasets.md holds the same table with the share of prompts whose subjects the word rule finds.
"""

from __future__ import annotations

from dataclasses import dataclass

from .compbench import COMPBENCH_FILES, PREFIX, PROMPTS_PER_SPLIT, SPLITS


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    prompts: int
    source: str
    licence: str
    tests: str


OURS = "this project's own (shipped in datasets/)"
OUR_LICENCE = "MIT, this project"
PAPER = "the Noise Diffusion authors' file, downloaded from a pinned commit"
PAPER_LICENCE = "MIT, the Noise Diffusion authors"
COMPBENCH = "T2I-CompBench's validation split, downloaded from a pinned commit"
COMPBENCH_LICENCE = "MIT, 2023 HKU"
COMPBENCH_TESTS = {
    "color": "attribute binding: colours ('a red book and a blue bowl')",
    "shape": "attribute binding: shapes ('an oval mirror and a rectangular painting')",
    "texture": "attribute binding: textures ('a metallic fork and a wooden desk')",
    "spatial": "spatial relations ('a cup on the right of a dog')",
    "non_spatial": "actions and interactions in free sentences ('A man is holding a book ...')",
    "complex": "several objects, attributes and relations in one free sentence",
}

CATALOGUE: tuple[DatasetInfo, ...] = (
    DatasetInfo("pairs", 276, OURS, OUR_LICENCE,
                "two subjects joined by and/with, after Attend-and-Excite's construction: categories animals, "
                "animals_objects, objects"),
    DatasetInfo("relations", 100, OURS, OUR_LICENCE,
                "two subjects joined by a spatial relation (under, on, below, above): category relations"),
    DatasetInfo("toy-simple", 45, f"{OURS}, the toy world", OUR_LICENCE, "two digits joined by 'and' (toy world)"),
    DatasetInfo("toy-complex", 360, f"{OURS}, the toy world", OUR_LICENCE,
                "two digits in a spatial relation (toy world)"),
    DatasetInfo("paper-simple", 276, PAPER, PAPER_LICENCE,
                "the paper's simple set: categories animals, animals_objects, objects"),
    DatasetInfo("paper-complex", 100, PAPER, PAPER_LICENCE, "the paper's complex set"),
    *(DatasetInfo(name, PROMPTS_PER_SPLIT, COMPBENCH, COMPBENCH_LICENCE, COMPBENCH_TESTS[name[len(PREFIX) + 1:]])
      for name in COMPBENCH_FILES),
    DatasetInfo(PREFIX, PROMPTS_PER_SPLIT * len(SPLITS), "the six T2I-CompBench splits above",
                COMPBENCH_LICENCE, "all six splits, one category each"),
)


def catalogue_lines() -> list[str]:
    """One line per set: name, prompts, source, licence, what it tests."""
    width = max(len(info.name) for info in CATALOGUE)
    return [f"  {info.name:<{width}}  {info.prompts:>4}  {info.tests}; {info.source} ({info.licence})"
            for info in CATALOGUE]
