#!/usr/bin/env python
"""The ``run.py`` command (installed as ``noise-diffusion-run`` too); it lives in noise_diffusion/commands/run.py.

    python run.py --help
"""

import sys

try:  # the imports take seconds (torch, diffusers): Ctrl-C meanwhile is a clean exit too
    from noise_diffusion.commands.run import cli, main, parse_args  # noqa: F401 (the tests call them)
except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    cli.main_guard(main)
