#!/usr/bin/env python
"""Fill the dataset cache from a local git clone of T2I-CompBench or of the Noise Diffusion authors' repository.

Each pinned file is read from the clone at its pinned commit (``git show COMMIT:PATH``), checked against the SHA-256
the package records, and written where ``--dataset`` looks for it; a file whose bytes differ is reported and not
written. For a machine with no network but a clone (or a mirror) of the repository:

    python scripts/cache_from_clone.py /path/to/T2I-CompBench
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from noise_diffusion.compbench import COMPBENCH_FILES  # noqa: E402
from noise_diffusion.paper_datasets import PAPER_FILES, sha256  # noqa: E402
from noise_diffusion.results import write_bytes_atomic  # noqa: E402


def git_show(clone: Path, commit: str, path: str) -> bytes | None:
    done = subprocess.run(["git", "-C", str(clone), "show", f"{commit}:{path}"], capture_output=True)
    return done.stdout if done.returncode == 0 else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("clone", type=Path, help="a git clone (or bare mirror) that holds the pinned commit")
    args = parser.parse_args(argv)
    found = bad = 0
    for name, spec in {**PAPER_FILES, **COMPBENCH_FILES}.items():
        data = git_show(args.clone, spec.commit, spec.path)
        if data is None:
            continue
        digest = sha256(data)
        if digest != spec.sha256:
            print(f"{name}: {spec.path} at {spec.commit[:12]} has SHA-256 {digest}, expected {spec.sha256}; "
                  f"not cached", file=sys.stderr)
            bad += 1
            continue
        write_bytes_atomic(spec.cached_path, data)
        found += 1
        print(f"{name}: {len(data)} bytes, SHA-256 {digest} as recorded -> {spec.cached_path}")
    if not found and not bad:
        print(f"{args.clone} holds none of the pinned files at their commits", file=sys.stderr)
    return 1 if bad or not found else 0


if __name__ == "__main__":
    sys.exit(main())
