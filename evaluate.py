#!/usr/bin/env python
"""The ``evaluate.py`` command (installed as ``noise-diffusion-evaluate`` too); it lives in noise_diffusion/commands/evaluate.py.

    python evaluate.py --help
"""

import sys

try:  # the imports take seconds (torch, diffusers): Ctrl-C meanwhile is a clean exit too
    from noise_diffusion.commands.evaluate import cli, main, parse_args  # noqa: F401 (the tests call them)
except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    cli.main_guard(main)
