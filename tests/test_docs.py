"""README.md and docs/*.md say only what the code does: their flags, commands, paths, result files and prompt counts
are checked against ``--help``, the repository's tree, a toy run and the shipped datasets.

Everything is read from the documents and the code at test time (no list of names is kept here), so a renamed flag,
a moved file or a new report file fails here until the documentation follows. Conventions the parsing relies on:

- a command is a program token (``run.py``, ``evaluate.py`` or any other ``.py`` at the top of the repository,
  ``python path/X.py``, ``python -m <package module>``, or a console command of pyproject.toml) and the flags after
  it up to the end of the command (a line end outside a ``\\`` continuation, ``|``, ``;``, ``&&``, a ``#`` comment);
  other flags (prose, table cells, help text) must be some documented program's;
- result folders are listed by README's ``| file | what |`` table (``run.py``) and by docs/evaluate.md's code block
  that starts with ``<result_root>/`` (``evaluate.py``): a line ending in ``/`` names a folder, the indented lines
  under it its files, a ``<result_root>/...`` line files at the top; ``[...]`` marks optional files, ``<name>`` a
  placeholder (letters, digits and underscores) and ``XXX`` a number.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
CONSOLE = PYPROJECT["project"]["scripts"]  # command name -> "module:function"
PACKAGES = [p.rstrip("*").rstrip(".") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]]
#: Words that describe how the project was made rather than the project.
WORKPLACE_WORDS = re.compile(r"\b(sessions?|agents?|the issue|device machines?)\b", re.I)

CODE_BLOCK = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE_CODE = re.compile(r"`([^`\n]+)`")
FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")
COMMAND_END = re.compile(r"\s(?:#|\|\||\||;|&&)|`|$")


def _text(doc: Path) -> str:
    return doc.read_text(encoding="utf-8")


def _rel(doc: Path) -> str:
    return str(doc.relative_to(ROOT))


# ------------------------------------------------------------------------------------------------ commands in docs

def _program_pattern() -> re.Pattern:
    top_scripts = sorted(p.name for p in ROOT.glob("*.py"))
    modules = "|".join(re.escape(p) for p in PACKAGES)
    alternatives = [
        rf"python3?\s+-m\s+(?P<module>(?:{modules})(?:\.\w+)*)",
        r"python3?\s+(?P<path>[\w./-]+\.py)",
        r"(?P<top>" + "|".join(re.escape(s) for s in top_scripts) + ")",
        r"(?P<console>" + "|".join(re.escape(c) for c in CONSOLE) + ")",
    ]
    return re.compile(r"(?<![\w./-])(?:" + "|".join(alternatives) + r")(?![\w.-])")


PROGRAM = _program_pattern()


def _program(match: re.Match) -> tuple[str, str]:
    """(kind, target) of a program token: ("script", repository path), ("module", name) or ("console", name)."""
    if match["module"]:
        return "module", match["module"]
    if match["console"]:
        return "console", match["console"]
    return "script", match["path"] or match["top"]


def _other_program(piece: str) -> bool:
    """Whether a piece of code is a command of another installed program (pip, accelerate, bash, ...): its flags are
    that program's."""
    first = piece.split()[0] if piece.split() else ""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return bool(re.fullmatch(r"[a-z][\w.-]*", first)) and shutil.which(first, path=search) is not None


def _lines_of_code(text: str) -> tuple[list[str], list[str]]:
    """The documents' code-block lines (``\\`` continuations joined) and their prose with code blocks removed."""
    code = []
    for block in CODE_BLOCK.findall(text):
        code += block.replace("\\\n", " ").splitlines()
    return code, CODE_BLOCK.sub("", text)


def doc_commands(text: str) -> tuple[list[tuple[tuple[str, str], list[str]]], list[str]]:
    """The commands a document names, each with the flags given to it, and the flags named outside any command."""
    code_lines, prose = _lines_of_code(text)
    pieces = code_lines + INLINE_CODE.findall(prose)
    commands, loose = [], FLAG.findall(INLINE_CODE.sub(" ", prose))
    for piece in pieces:
        matches = list(PROGRAM.finditer(piece))
        if not matches:
            if not _other_program(piece):
                loose += FLAG.findall(piece)
            continue
        for match in matches:
            rest = piece[match.end():]
            end = COMMAND_END.search(rest)
            commands.append((_program(match), FLAG.findall(rest[:end.start()])))
    return commands, loose


@cache
def all_commands() -> dict[Path, tuple[list, list]]:
    return {doc: doc_commands(_text(doc)) for doc in DOCS}


# ------------------------------------------------------------------------------------------------ --help, cached

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

def _pattern(name: str) -> re.Pattern:
    name = name.strip("`[]")
    pieces = re.split(r"(<[^>]+>|XXX)", name)
    regex = "".join(r"\d+" if p == "XXX" else r"[A-Za-z0-9_]+" if p.startswith("<") else re.escape(p)
                    for p in pieces)
    return re.compile(regex + "$")


def readme_run_files() -> list[str]:
    """The first column of README's ``| file | what |`` table."""
    lines = _text(ROOT / "README.md").splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"\|\s*file\s*\|\s*what\s*\|", line))
    names = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        names += INLINE_CODE.findall(line.split("|")[1])
    return names


def evaluate_layout() -> tuple[list[str], list[str]]:
    """(files of a run folder, files at the top of the result root) from docs/evaluate.md's layout block."""
    block = next(b for b in CODE_BLOCK.findall(_text(ROOT / "docs" / "evaluate.md")) if b.startswith("<result_root>/"))
    run_files, top_files, in_folder = [], [], False
    for line in block.splitlines():
        tokens = line.split()
        if not tokens:
            continue
        if line.startswith("<result_root>/") and line.rstrip().endswith("/"):
            in_folder = True
        elif line.startswith("<result_root>/"):
            in_folder = False
            top_files += [tokens[0][len("<result_root>/"):], *tokens[1:]]
        elif in_folder:
            run_files += tokens
    return run_files, top_files


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _compare(documented: list[str], written: list[str], what: str) -> list[str]:
    patterns = {name: _pattern(name) for name in documented}
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
                wrong.append(f"{_rel(doc)}: {program[1]} is not a file of the repository")
                continue
            wrong += [f"{_rel(doc)}: {program[1]} has no {flag}" for flag in flags if flag not in _help_flags(program)]
        wrong += [f"{_rel(doc)}: no documented program has {flag}" for flag in sorted(set(loose) - known)]
    assert not wrong, "\n".join(sorted(set(wrong)))


# ------------------------------------------------------------------------------------------------ paths

PATH_TOKEN = re.compile(r"(?<![\w./~$<-])((?:\.?[\w-]+/)+[\w.*-]*)")
LINK = re.compile(r"\]\(([^)\s]+)\)")


@cache
def _tracked_tops() -> set[str]:
    done = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=ROOT)
    files = done.stdout.split() if done.returncode == 0 else [str(p.relative_to(ROOT)) for p in ROOT.iterdir()]
    return {f.split("/")[0] for f in files if "/" in f}


def doc_paths(text: str) -> list[str]:
    """Repository paths a document names: tokens whose first folder is a top-level folder of the repository (``*`` as
    a glob; paths with placeholders such as ``<seed>`` or ``epoch_XXX`` are not paths).

    A paragraph or table row that names another repository (github.com/...) names that repository's files, not ours."""
    tops = _tracked_tops()
    found = []
    for block in _blocks(text):
        if "github.com/" in block:
            continue
        for token in PATH_TOKEN.findall(block):
            if token.split("/")[0] in tops and "XXX" not in token:
                found.append(token.rstrip("."))
    return found


def test_every_repository_path_the_docs_name_exists():
    missing = []
    for doc in DOCS:
        text = _text(doc)
        missing += [f"{_rel(doc)}: {p}" for p in doc_paths(text) if not any(ROOT.glob(p.rstrip("/")))]
        for target in LINK.findall(text):
            target = target.split("#")[0]
            if target and "://" not in target and not (doc.parent / target).exists():
                missing.append(f"{_rel(doc)}: link {target}")
    assert not missing, "named but absent:\n" + "\n".join(sorted(set(missing)))


# ------------------------------------------------------------------------------------------------ prompt counts

def _entries(path: Path) -> dict[str, list] | None:
    """category -> entries of a prompt file in the authors' format (None when the file is no such dataset)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(data, list):
        data = {path.stem: data}
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        return None
    if not all(isinstance(e, (str, dict)) for v in data.values() for e in v):
        return None
    return data


def _claims(segment: str) -> list[tuple[str, str | None, int]]:
    """("prompts" | "category" | "held out", category, number) stated in a piece of text."""
    claims = [("prompts", None, int(n.replace(",", "")))
              for n in re.findall(r"(?<![\w.])(\d[\d,]*)\s+(?:[`\w-]+\s+){0,2}?prompts\b", segment)]
    claims += [("category", c, int(n)) for c, n in re.findall(r"`([\w-]+)`\s*\((\d+)\)", segment)]
    claims += [("held out", None, int(n)) for n in re.findall(r"(?<![\w.])(\d+)\s+held[ -]out\b(?! comb)", segment)]
    return claims


def _check(path: Path, claims, where: str) -> list[str]:
    data = _entries(path)
    counts = {"prompts": sum(map(len, data.values())),
              "held out": sum(isinstance(e, dict) and bool(e.get("held_out")) for v in data.values() for e in v)}
    wrong = []
    for kind, category, number in claims:
        actual = len(data.get(category, [])) if kind == "category" else counts[kind]
        if actual != number:
            wrong.append(f"{where}: {path.relative_to(ROOT)}: {number} {category or kind} stated, {actual} in the file")
    return wrong


def _blocks(text: str) -> list[str]:
    """Paragraphs, list items and single table rows (the unit a count or a path belongs to)."""
    blocks = []
    for paragraph in re.split(r"\n\s*\n|\n(?=\s*[-*] )", text):
        lines = paragraph.splitlines()
        rows = [line for line in lines if line.startswith("|")]
        blocks += rows + ["\n".join(line for line in lines if not line.startswith("|"))]
    return blocks


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
    return path if ROOT in path.resolve().parents and _entries(path) else None


def test_built_in_datasets_have_the_prompt_counts_the_docs_state():
    wrong, checked = [], 0
    for doc in DOCS:
        text = _text(doc)
        for block in _blocks(CODE_BLOCK.sub("", text)):
            mentions = [m for m in PATH_TOKEN.finditer(block) if m.group(1).endswith(".json")
                        and (ROOT / m.group(1)).is_file() and _entries(ROOT / m.group(1))]
            for i, mention in enumerate(mentions):
                end = mentions[i + 1].start() if i + 1 < len(mentions) else len(block)
                claims = _claims(block[mention.end():end])
                checked += len(claims)
                wrong += _check(ROOT / mention.group(1), claims, _rel(doc))
        for code in CODE_BLOCK.findall(text):  # "# ... (N prompts)" above a command with --dataset NAME
            lines = code.splitlines()
            for above, line in zip(lines, lines[1:]):
                name = re.search(r"--dataset\s+(\S+)", line)
                path = name and above.lstrip().startswith("#") and _dataset_by_name(name.group(1))
                if path:
                    claims = _claims(above)
                    checked += len(claims)
                    wrong += _check(path, claims, _rel(doc))
    assert checked, "no prompt count found in the documents"
    assert not wrong, "\n".join(wrong)


# ------------------------------------------------------------------------------------------------ words

def test_docs_speak_of_the_project_not_of_how_it_was_made():
    found = [f"{_rel(doc)}:{n}: {m.group(0)!r}" for doc in DOCS
             for n, line in enumerate(_text(doc).splitlines(), 1) for m in WORKPLACE_WORDS.finditer(line)]
    assert not found, "\n".join(found)
