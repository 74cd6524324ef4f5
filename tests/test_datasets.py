"""Prompt datasets: Attend-and-Excite's construction, the shipped files in datasets/, the names, and the loader's formats
and errors."""

import json
import re
from collections import Counter
from itertools import combinations
from pathlib import Path

import pytest

from noise_diffusion import datasets as ds
from noise_diffusion.errors import UserError

ROOT = Path(__file__).resolve().parents[1]

NOUNS = set(ds.ANIMALS) | set(ds.OBJECTS)


def subjects(prompt):
    return [w for w in prompt.split() if w in NOUNS]


def check_articles(prompt):
    words = prompt.split()
    for art, nxt in zip(words, words[1:]):
        if art in ("a", "an"):
            assert art == ("an" if nxt[0] in "aeiou" else "a"), prompt


def check_indices(entry):
    # independent of subject_indices: index k must be the k-th word (start token at 0) and a subject noun
    words = entry["prompt"].split()
    assert [words[i - 1] for i in entry["indices"]] == subjects(entry["prompt"]), entry


def test_simple_set_follows_the_construction():
    data = ds.build_simple(seed=0)
    assert {k: len(v) for k, v in data.items()} == {"animals": 66, "animals_objects": 144, "objects": 66}
    animals = {frozenset(subjects(e["prompt"])) for e in data["animals"]}
    assert animals == {frozenset(p) for p in combinations(ds.ANIMALS, 2)}
    assert {tuple(subjects(e["prompt"])) for e in data["animals_objects"]} == {
        (a, o) for a in ds.ANIMALS for o in ds.OBJECTS}
    assert {frozenset(subjects(e["prompt"])) for e in data["objects"]} == {
        frozenset(p) for p in combinations(ds.OBJECTS, 2)}
    colour = "|".join(ds.COLOURS)
    for e in data["animals"]:
        assert re.fullmatch(r"an? \w+ and an? \w+", e["prompt"])
    for e in data["animals_objects"]:
        a, o = subjects(e["prompt"])
        if o in ds.WEARABLES:
            assert e["prompt"] == f"{ds.article(a)} {a} with a {o}"
        else:
            assert re.fullmatch(rf"an? {a} and an? ({colour}) {o}", e["prompt"])
    for e in data["objects"]:
        assert re.fullmatch(rf"an? ({colour}) \w+ and an? ({colour}) \w+", e["prompt"])
    for entries in data.values():
        for e in entries:
            check_articles(e["prompt"])
            check_indices(e)
    assert "an elephant and a frog" in [e["prompt"] for e in data["animals"]]


def test_complex_set_follows_the_construction():
    data = ds.build_complex(seed=0)
    assert len(data) == 100
    relations = Counter(re.search(r" (under|on|below|above) ", e["prompt"]).group(1) for e in data)
    assert relations == {"under": 42, "on": 27, "below": 17, "above": 14}
    kinds = Counter()
    for e in data:
        first, second = subjects(e["prompt"])
        kinds["-".join("animal" if w in ds.ANIMALS else "object" for w in (first, second))] += 1
        assert first != second
        check_articles(e["prompt"])
        check_indices(e)
    assert kinds == {"animal-animal": 33, "animal-object": 33, "object-object": 34}
    assert len({e["prompt"] for e in data}) == 100


def test_construction_is_seeded_and_the_committed_files_match_it():
    assert ds.build_simple(3) == ds.build_simple(3) and ds.build_complex(3) == ds.build_complex(3)
    assert ds.build_simple(3) != ds.build_simple(4)
    assert ds.DATASET_DIR == ROOT / "datasets"  # a checkout reads the top-level folder, no copy in the package
    assert not (ROOT / "noise_diffusion" / "data").exists()
    simple = json.loads((ds.DATASET_DIR / "pairs.json").read_text())
    complex_ = json.loads((ds.DATASET_DIR / "relations.json").read_text())
    assert simple == ds.build_simple(0) and complex_ == ds.build_complex(0)
    loaded = ds.load_dataset("pairs")
    assert Counter(e.category for e in loaded) == {"animals": 66, "animals_objects": 144, "objects": 66}
    assert {e.category for e in ds.load_dataset("relations")} == {"relations"}
    # the project's own sets never carry the authors' file names (the report prints the paper's numbers beside those)
    assert ds.dataset_kind(ds.resolve("pairs")) is None and ds.dataset_kind(ds.resolve("relations")) is None


def test_the_old_names_say_which_set_to_choose():
    for old, choices in (("simple", ("'pairs'", "'paper-simple'")), ("complex", ("'relations'", "'paper-complex'"))):
        with pytest.raises(UserError, match=f"there is no dataset '{old}'") as error:
            ds.resolve(old)
        assert all(choice in str(error.value) for choice in choices) and "\n" not in str(error.value)


def test_the_catalogue_lists_every_name_with_the_shipped_counts():
    from noise_diffusion.catalogue import CATALOGUE
    from noise_diffusion.compbench import NAMES as COMPBENCH_NAMES
    from noise_diffusion.paper_datasets import PAPER_FILES

    names = [info.name for info in CATALOGUE]
    assert sorted(names) == sorted([*ds.BUILTIN, *PAPER_FILES, *COMPBENCH_NAMES])
    counts = {info.name: info.prompts for info in CATALOGUE}
    for name in ds.BUILTIN:  # counted here from the files
        assert counts[name] == len(ds.load_dataset(name)), name
    assert counts["t2i-compbench"] == 1800 and counts["paper-simple"] == 276 and counts["paper-complex"] == 100


def test_evaluate_help_lists_every_set(capsys):
    from noise_diffusion.catalogue import CATALOGUE
    from noise_diffusion.commands.evaluate import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    shown = capsys.readouterr().out
    for info in CATALOGUE:
        assert re.search(rf"^ +{re.escape(info.name)} +{info.prompts} ", shown, re.M), info.name
    assert "MIT licence, 2023 HKU" in shown and "docs/datasets.md" in shown


AUTHORS_SIMPLE = {  # the authors' layout: category -> list of {"prompt", "indices"}
    "animals": [{"prompt": "an elephant and a rabbit", "indices": [2, 5]},
                {"prompt": "a dog and a frog", "indices": [2, 5]}],
    "animals_objects": [{"prompt": "a horse with a glasses", "indices": [2, 5]}],
    "objects": [{"prompt": "a pink crown and a purple bow", "indices": [3, 7]}],
}
AUTHORS_COMPLEX = [{"prompt": "an elephant under a rabbit", "indices": [2, 5]},
                   {"prompt": "a blue balloon on an orange bench", "indices": [3, 7]}]


def test_reads_the_authors_format(tmp_path):
    simple = tmp_path / "simple_cases.json"
    simple.write_text(json.dumps(AUTHORS_SIMPLE))
    complex_ = tmp_path / "complex_cases.json"
    complex_.write_text(json.dumps(AUTHORS_COMPLEX))
    entries = ds.load_dataset(str(simple))
    expected = [(e["prompt"], c, tuple(e["indices"])) for c, items in AUTHORS_SIMPLE.items() for e in items]
    assert [(e.prompt, e.category, e.indices) for e in entries] == expected
    entries = ds.load_dataset(str(complex_))
    assert [(e.prompt, e.category, e.indices) for e in entries] == [
        (e["prompt"], "complex", tuple(e["indices"])) for e in AUTHORS_COMPLEX]
    assert ds.dataset_kind(simple) == "simple" and ds.dataset_kind(complex_) == "complex"
    assert ds.dataset_kind(tmp_path / "mine.json") is None
    # categories and limit (first N of each category)
    assert [e.prompt for e in ds.load_dataset(str(simple), categories=["objects", "animals"], limit=1)] == [
        "an elephant and a rabbit", "a pink crown and a purple bow"]


def test_reads_plain_prompt_lists_and_text_files(tmp_path):
    plain = tmp_path / "mine.json"
    plain.write_text(json.dumps(["a cat on a mat", " a red car "]))
    assert [(e.prompt, e.category, e.indices) for e in ds.load_dataset(str(plain))] == [
        ("a cat on a mat", "mine", None), ("a red car", "mine", None)]
    text = tmp_path / "prompts.txt"
    text.write_text("# my prompts\na cat on a mat\n\n  a dog under a table  \n")
    assert [e.prompt for e in ds.load_dataset(str(text))] == ["a cat on a mat", "a dog under a table"]


@pytest.mark.parametrize("content, message", [
    ('{"animals": [{"prompt": "a cat"}, {"indices": [2, 5]}]}', r"entry 1 of 'animals': missing 'prompt'"),
    ('[{"prompt": "a cat", "indices": [2, "x"]}]', r"entry 0 of 'bad': 'indices' must be a list of non-negative"),
    ('[{"prompt": 3}]', r"entry 0 of 'bad': 'prompt' must be a string"),
    ('["a cat", "  "]', r"entry 1 of 'bad': the prompt is empty"),
    ('["a cat", 7]', r"entry 1 of 'bad': expected a prompt string"),
    ('{"animals": {"prompt": "a cat"}}', r"category 'animals' must map to a list"),
    ('"a cat"', r"expected a list of prompts or an object"),
    ('{"animals": [}', r"not valid JSON .* line 1"),
    ('[]', r"no prompts"),
])
def test_malformed_files_name_the_file_entry_and_problem(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(UserError, match=message) as error:
        ds.load_dataset(str(path))
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_unknown_category_and_missing_file_are_clear(tmp_path):
    path = tmp_path / "simple_cases.json"
    path.write_text(json.dumps(AUTHORS_SIMPLE))
    with pytest.raises(UserError, match=r"unknown category 'animal' in .*known: animals, animals_objects, objects"):
        ds.load_dataset(str(path), categories=["animal"])
    with pytest.raises(UserError, match="neither a file nor a known name"):
        ds.load_dataset(str(tmp_path / "nope.json"))
