"""The pieces of every command line of the project: argparse with one-line errors, checked argument types, and the
guard that turns user errors and Ctrl-C into one line and an exit status."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Callable

from .errors import UserError


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump) and exit status 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


def _bounded(kind, low, name_of_bound: str, high=None):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {name_of_bound}, got {text}")
        return value

    return parse


non_negative_int = _bounded(int, 0, ">= 0")
positive_int = _bounded(int, 1, ">= 1")
positive_float = _bounded(float, 1e-300, "> 0")
finite_float = _bounded(float, None, "finite")
#: torch.Generator.manual_seed takes 0 .. 2**64-1 (negative seeds would alias large ones)
seed_int = _bounded(int, 0, "an integer from 0 to 2**64-1", high=2**64 - 1)


def unit_float(text: str) -> float:
    value = _bounded(float, 0.0, ">= 0")(text)
    if value > 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text}")
    return value


def main_guard(main: Callable[[], int | None]) -> None:
    """Run a CLI entry point; user errors become one line on stderr and a non-zero exit, never a traceback."""
    try:
        code = main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as error:
        where = f" ({error.filename})" if getattr(error, "filename", None) else ""
        print(f"error: {error.strerror or error}{where}", file=sys.stderr)
        sys.exit(1)
    sys.exit(code or 0)
