"""Reading README.md and docs/*.md for tests/test_docs.py: the commands and flags they give, the repository paths
they name, the result-folder listings and the prompt counts they state.

Conventions the parsing relies on:

- a command is a program token (``run.py``, ``evaluate.py`` or any other ``.py`` at the top of the repository,
  ``python path/X.py``, ``python -m <package module>``, or a console command of pyproject.toml) and the flags after
  it up to the end of the command (a line end outside a ``\\`` continuation, ``|``, ``;``, ``&&``, a ``#`` comment);
  a piece of code that starts with another installed program (pip, accelerate, ...) gives that program's flags; any
  other flag (prose, table cells, help text) must be some documented program's;
- result folders are listed by README's ``| file | what |`` table (``run.py``) and by docs/evaluate.md's code block
  that starts with ``<result_root>/`` (``evaluate.py``): a line ending in ``/`` names a folder, the indented lines
  under it its files, a ``<result_root>/...`` line files at the top; ``[...]`` marks optional files, ``<name>`` a
  placeholder (letters, digits and underscores) and ``XXX`` a number;
- a count belongs to the paragraph, list item or table row that names the dataset file, after the file's name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
CONSOLE = PYPROJECT["project"]["scripts"]  # command name -> "module:function"
PACKAGES = sorted({name.split(".")[0] for name in PYPROJECT["tool"]["setuptools"]["packages"]})  # top-level packages
#: Words that describe how the project was made rather than the project.
WORKPLACE_WORDS = re.compile(r"\b(sessions?|agents?|the issue|device machines?)\b", re.I)

CODE_BLOCK = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE_CODE = re.compile(r"`([^`\n]+)`")
FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")
COMMAND_END = re.compile(r"\s(?:#|\|\||\||;|&&)|`|$")


def doc_text(doc: Path) -> str:
    return doc.read_text(encoding="utf-8")


def doc_name(doc: Path) -> str:
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
    return {doc: doc_commands(doc_text(doc)) for doc in DOCS}


def file_pattern(name: str) -> re.Pattern:
    name = name.strip("`[]")
    pieces = re.split(r"(<[^>]+>|XXX)", name)
    regex = "".join(r"\d+" if p == "XXX" else r"[A-Za-z0-9_]+" if p.startswith("<") else re.escape(p)
                    for p in pieces)
    return re.compile(regex + "$")


def readme_run_files() -> list[str]:
    """The first column of README's ``| file | what |`` table."""
    lines = doc_text(ROOT / "README.md").splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"\|\s*file\s*\|\s*what\s*\|", line))
    names = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        names += INLINE_CODE.findall(line.split("|")[1])
    return names


def evaluate_layout() -> tuple[list[str], list[str]]:
    """(files of a run folder, files at the top of the result root) from docs/evaluate.md's layout block."""
    code = CODE_BLOCK.findall(doc_text(ROOT / "docs" / "evaluate.md"))
    block = next(b for b in code if b.startswith("<result_root>/"))
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
    for block in blocks(text):
        if "github.com/" in block:
            continue
        for token in PATH_TOKEN.findall(block):
            if token.split("/")[0] in tops and "XXX" not in token:
                found.append(token.rstrip("."))
    return found


def dataset_entries(path: Path) -> dict[str, list] | None:
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


def count_claims(segment: str) -> list[tuple[str, str | None, int]]:
    """("prompts" | "category" | "held out", category, number) stated in a piece of text."""
    claims = [("prompts", None, int(n.replace(",", "")))
              for n in re.findall(r"(?<![\w.])(\d[\d,]*)\s+(?:[`\w-]+\s+){0,2}?prompts\b", segment)]
    claims += [("category", c, int(n)) for c, n in re.findall(r"`([\w-]+)`\s*\((\d+)\)", segment)]
    claims += [("held out", None, int(n)) for n in re.findall(r"(?<![\w.])(\d+)\s+held[ -]out\b(?! comb)", segment)]
    return claims


def blocks(text: str) -> list[str]:
    """Paragraphs, list items and single table rows (the unit a count or a path belongs to)."""
    blocks = []
    for paragraph in re.split(r"\n\s*\n|\n(?=\s*[-*] )", text):
        lines = paragraph.splitlines()
        rows = [line for line in lines if line.startswith("|")]
        blocks += rows + ["\n".join(line for line in lines if not line.startswith("|"))]
    return blocks
