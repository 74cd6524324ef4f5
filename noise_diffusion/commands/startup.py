"""Ctrl-C while an installed command starts: the imports take seconds (torch, diffusers), and an interrupt then is a
clean exit too (one line, status 130), as it is once the command runs (:func:`noise_diffusion.arguments.main_guard`).

The package imports everything heavy inside :func:`interruptible_start`; a program that merely imports the package
keeps its own ``KeyboardInterrupt``.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Iterator

#: the installed console commands (``[project.scripts]``)
COMMANDS = ("noise-diffusion-run", "noise-diffusion-evaluate")


def is_console_command(argv0: str) -> bool:
    """Is ``argv0`` (``sys.argv[0]``) one of the installed commands (``.exe`` and ``-script.py`` wrappers too)?"""
    name = Path(argv0).name.removesuffix(".exe").removesuffix("-script.py")
    return name in COMMANDS


@contextlib.contextmanager
def interruptible_start() -> Iterator[None]:
    """Turn a Ctrl-C inside the block into ``interrupted`` and exit status 130 when a console command runs."""
    try:
        yield
    except KeyboardInterrupt:
        if not is_console_command(sys.argv[0] if sys.argv else ""):
            raise
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
