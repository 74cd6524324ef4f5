#!/usr/bin/env python
"""Rewrite the README's copy of ``run.py --help`` (the block under "Every flag of `run.py`") from the real parser.

tests/test_readme.py fails when the two differ; run this after changing a flag:  python scripts/update_readme_help.py
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: the heading above the block, then the fenced block itself
BLOCK = re.compile(r"(### Every flag of `run.py`\n\n```\n)(.*?)(```\n)", re.S)


def run_help() -> str:
    done = subprocess.run([sys.executable, str(ROOT / "run.py"), "--help"], capture_output=True, text=True, check=True,
                          cwd=ROOT)
    return done.stdout


def readme_help(text: str) -> str:
    match = BLOCK.search(text)
    if match is None:
        raise SystemExit("README.md has no block under '### Every flag of `run.py`'")
    return match.group(2)


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    text = README.read_text(encoding="utf-8")
    readme_help(text)  # the block must exist
    README.write_text(BLOCK.sub(lambda m: m.group(1) + run_help() + m.group(3), text, count=1), encoding="utf-8")
    print(f"{README}: run.py --help block updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
