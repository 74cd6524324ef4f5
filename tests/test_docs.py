"""README.md and docs/*.md say only what the code does: their flags, commands, paths, result files and prompt counts
are checked against ``--help``, the repository's tree, a toy run and the shipped datasets.

Everything is read from the documents and the code at test time (no list of names is kept here), so a renamed flag,
a moved file or a new report file fails here until the documentation follows; tests/docs_text.py reads the documents
and states the conventions it relies on.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path

import pytest

from docs_text import (
    CODE_BLOCK, CONSOLE, DOCS, FLAG, LINK, PATH_TOKEN, ROOT, WORKPLACE_WORDS, all_commands, blocks, count_claims,
    dataset_entries, doc_name, doc_paths, doc_text, evaluate_layout, file_pattern, readme_run_files,
)


# ------------------------------------------------------------------------------------------------ --help

HELP_DRIVER = r"""
import contextlib, importlib, io, json, os, runpy, sys, traceback
out = {}
for kind, target in json.loads(sys.argv[1]):
    buffer, code, argv, path = io.StringIO(), 0, sys.argv, list(sys.path)
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            if kind == "script":
                sys.argv = [target, "--help"]
                sys.path.insert(0, os.path.dirname(os.path.abspath(target)))
                runpy.run_path(target, run_name="__main__")
            elif kind == "module":
                sys.argv = [target, "--help"]
                runpy.run_module(target, run_name="__main__", alter_sys=True)
            else:
                module, function = target.split(":")
                sys.argv = [module, "--help"]
                getattr(importlib.import_module(module), function)()
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
    except BaseException:
        code = 1
        buffer.write(traceback.format_exc())
    finally:
        sys.argv, sys.path[:] = argv, path
    out[kind + " " + target] = [code, buffer.getvalue()]
json.dump(out, sys.__stdout__)
"""


def _help_target(program: tuple[str, str]) -> tuple[str, str]:
    kind, target = program
    if kind == "script":
        return kind, str(ROOT / target)
    if kind == "console":
        return kind, CONSOLE[target]
    return program


def _helped_programs() -> list[tuple[str, str]]:
    """Every program with flags in the documents, every ``python X.py`` they name, and the console commands.

    A module named without flags is not run: ``--help`` would be its first argument, not a request for help."""
    wanted = {("console", name) for name in CONSOLE}
    for commands, _ in all_commands().values():
        for program, flags in commands:
            if program[0] == "script" and (ROOT / program[1]).is_file() or flags:
                wanted.add(program)
    return sorted(wanted)


@cache
def _help_process() -> tuple[list[tuple[str, str]], subprocess.Popen]:
    """Start one process that prints every program's ``--help`` (one process: importing torch and diffusers is most of
    the cost, and it is paid once)."""
    programs = [p for p in _helped_programs() if p[0] != "script" or (ROOT / p[1]).is_file()]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    targets = json.dumps([_help_target(p) for p in programs])
    process = subprocess.Popen([sys.executable, "-c", HELP_DRIVER, targets], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=tempfile.gettempdir(), env=env)
    return programs, process


@cache
def helps() -> dict[tuple[str, str], tuple[int, str]]:
    """``--help`` (exit code, output) of every program."""
    programs, process = _help_process()
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-2000:]
    found = json.loads(out)
    return {p: tuple(found[" ".join(_help_target(p))]) for p in programs}


@pytest.fixture(scope="module", autouse=True)
def _helps_meanwhile():
    """The ``--help`` process runs while the toy runs below take the other core."""
    _help_process()
    yield
    process = _help_process()[1]
    if process.poll() is None:
        process.kill()
        process.communicate()


def _help_flags(program) -> set[str]:
    return set(FLAG.findall(helps()[program][1]))


# ------------------------------------------------------------------------------------------------ result folders

def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _compare(documented: list[str], written: list[str], what: str) -> list[str]:
    patterns = {name: file_pattern(name) for name in documented}
    problems = [f"{what}: written but not documented: {f}" for f in written
                if not any(p.match(f) for p in patterns.values())]
    problems += [f"{what}: documented but not written: {name}" for name, p in patterns.items()
                 if not any(p.match(f) for f in written)]
    return problems


TOY = ["--sd_version", "toy-digits", "--vqa_model", "toy-digits-cnn", "--device", "cpu", "--max_epoch", "1",
       "--num_candidate_noises", "4", "--num_denoising_steps", "4", "--save_all_epochs", "--quiet"]


def test_result_folders_hold_exactly_the_documented_files(tmp_path):
    """A toy run of run.py and of evaluate.py (every optional file asked for) writes what the docs list, no more."""
    from noise_diffusion.commands import evaluate as evaluate_command
    from noise_diffusion.commands import run as run_command

    assert run_command.main(["--prompt", "a 2 left of a 3", "--seed", "0", "--result_root", str(tmp_path / "run"),
                             *TOY]) == 0
    (run_folder,) = [p for p in (tmp_path / "run").glob("*/*") if p.is_dir()]
    problems = _compare(readme_run_files(), _files(run_folder), "README, run.py folder")

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a 2 left of a 3\n")
    root = tmp_path / "evaluate"
    assert evaluate_command.main(["--dataset", str(prompts), "--seeds", "0", "--result_root", str(root),
                                  "--eval_vqa_model", "toy-digits-heldout", *TOY]) == 0
    run_files, top_files = evaluate_layout()
    (method,) = [p for p in root.iterdir() if p.is_dir()]
    (run_folder,) = [p for p in method.glob("*/*") if p.is_dir()]
    problems += _compare(run_files, _files(run_folder), "docs/evaluate.md, run folder")
    problems += _compare(top_files, [p.name for p in root.iterdir() if p.is_file()], "docs/evaluate.md, top")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------------------------ commands and flags

def test_every_documented_python_script_runs_help():
    """Each ``python X.py`` the documents name prints its usage and exits 0 (an import error cannot hide)."""
    named = sorted({p for commands, _ in all_commands().values() for p, _ in commands
                    if p[0] == "script" and (ROOT / p[1]).is_file()})
    assert named, "no python script found in the documents"
    broken = [f"{p[1]}: exit {helps()[p][0]}: {helps()[p][1].strip().splitlines()[-1:] or ''}" for p in named
              if helps()[p][0] != 0 or "usage:" not in helps()[p][1]]
    assert not broken, "scripts whose --help fails:\n" + "\n".join(broken)


def test_every_documented_flag_exists_in_its_commands_help():
    """A flag given to a command is in that command's ``--help``; any other flag the documents name is in the
    ``--help`` of a program of that document, of run.py / evaluate.py or of a console command."""
    general = set().union(*(_help_flags(p) for p in helps() if p[0] == "console"))
    wrong = []
    for doc, (commands, loose) in all_commands().items():
        known = set(general)
        for program, flags in commands:
            if program in helps():
                known |= _help_flags(program)
        for program, flags in commands:
            if not flags:
                continue
            if program not in helps():
                wrong.append(f"{doc_name(doc)}: {program[1]} is not a file of the repository")
                continue
            wrong += [f"{doc_name(doc)}: {program[1]} has no {flag}" for flag in flags
                      if flag not in _help_flags(program)]
        wrong += [f"{doc_name(doc)}: no documented program has {flag}" for flag in sorted(set(loose) - known)]
    assert not wrong, "\n".join(sorted(set(wrong)))


# ------------------------------------------------------------------------------------------------ paths

def test_every_repository_path_the_docs_name_exists():
    missing = []
    for doc in DOCS:
        text = doc_text(doc)
        missing += [f"{doc_name(doc)}: {p}" for p in doc_paths(text) if not any(ROOT.glob(p.rstrip("/")))]
        for target in LINK.findall(text):
            target = target.split("#")[0]
            if target and "://" not in target and not (doc.parent / target).exists():
                missing.append(f"{doc_name(doc)}: link {target}")
    assert not missing, "named but absent:\n" + "\n".join(sorted(set(missing)))


# ------------------------------------------------------------------------------------------------ prompt counts

def _check(path: Path, claims, where: str) -> list[str]:
    data = dataset_entries(path)
    counts = {"prompts": sum(map(len, data.values())),
              "held out": sum(isinstance(e, dict) and bool(e.get("held_out")) for v in data.values() for e in v)}
    wrong = []
    for kind, category, number in claims:
        actual = len(data.get(category, [])) if kind == "category" else counts[kind]
        if actual != number:
            wrong.append(f"{where}: {path.relative_to(ROOT)}: {number} {category or kind} stated, {actual} in the file")
    return wrong


def _dataset_by_name(name: str) -> Path | None:
    """The shipped file behind a built-in ``--dataset`` name (None for anything else, downloads included)."""
    try:
        from noise_diffusion.datasets import resolve
        from noise_diffusion.paper_datasets import PAPER_FILES
        if name in PAPER_FILES:
            return None
        path = Path(resolve(name))
    except Exception:  # not a built-in name, or a download that is not cached
        return None
    return path if ROOT in path.resolve().parents and dataset_entries(path) else None


def test_built_in_datasets_have_the_prompt_counts_the_docs_state():
    wrong, checked = [], 0
    for doc in DOCS:
        text = doc_text(doc)
        for block in blocks(CODE_BLOCK.sub("", text)):
            mentions = [m for m in PATH_TOKEN.finditer(block) if m.group(1).endswith(".json")
                        and (ROOT / m.group(1)).is_file() and dataset_entries(ROOT / m.group(1))]
            for i, mention in enumerate(mentions):
                end = mentions[i + 1].start() if i + 1 < len(mentions) else len(block)
                claims = count_claims(block[mention.end():end])
                checked += len(claims)
                wrong += _check(ROOT / mention.group(1), claims, doc_name(doc))
        for code in CODE_BLOCK.findall(text):  # "# ... (N prompts)" above a command with --dataset NAME
            lines = code.splitlines()
            for above, line in zip(lines, lines[1:]):
                name = re.search(r"--dataset\s+(\S+)", line)
                path = name and above.lstrip().startswith("#") and _dataset_by_name(name.group(1))
                if path:
                    claims = count_claims(above)
                    checked += len(claims)
                    wrong += _check(path, claims, doc_name(doc))
    assert checked, "no prompt count found in the documents"
    assert not wrong, "\n".join(wrong)


# ------------------------------------------------------------------------------------------------ words

def test_docs_speak_of_the_project_not_of_how_it_was_made():
    found = [f"{doc_name(doc)}:{n}: {m.group(0)!r}" for doc in DOCS
             for n, line in enumerate(doc_text(doc).splitlines(), 1) for m in WORKPLACE_WORDS.finditer(line)]
    assert not found, "\n".join(found)
