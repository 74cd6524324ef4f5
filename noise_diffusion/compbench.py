"""T2I-CompBench's validation prompts (``--dataset t2i-compbench-<split>``, ``--dataset t2i-compbench``), pinned and
checked like the authors' files.

T2I-CompBench (Huang et al., NeurIPS 2023; github.com/Karine-Huang/T2I-CompBench, MIT licence, © 2023 HKU) ships each
validation split as ``examples/dataset/<split>_val.txt``: 300 prompts, one a line (CRLF line ends). The six splits
are fetched from a pinned commit and checked against their SHA-256 by :mod:`noise_diffusion.paper_datasets`, and
cached as ``<split>.txt`` so that the split's name is the prompts' category. ``t2i-compbench`` is all six at once: a
JSON object split -> prompts, written beside them in the cache from the checked files.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import UserError
from .paper_datasets import RemoteFile, fetch_checked
from .atomic import write_bytes_atomic

REPOSITORY = "Karine-Huang/T2I-CompBench"
COMMIT = "1b7094991a57f3c22abdd4f6e8ba6c1a15517073"  # main on 2026-05-07; the val files last changed on 2025-09-03
PREFIX = "t2i-compbench"
#: split -> SHA-256 of ``examples/dataset/<split>_val.txt`` at COMMIT (300 prompts each)
SPLITS = {
    "color": "1634259756dbc77d13093d907d414480080ec9790a8c97ad09efaea7b2534f2d",
    "shape": "37e1a276906c7ea9516cbd7ac8501be896006c0c17ca7344f260562834455bae",
    "texture": "fbb5363515b4a28009e360afaaaf389d2dd2289e50dbb0c6ef4ea0c7fe4f3d4f",
    "spatial": "8707a1d7e42ce3002d95363cf55f74bd043c843ae27108f5125aaaa7840ca988",
    "non_spatial": "04c56cc9ac441dc9ea6c5157652058bd1635b5308526dd31bb29a1caab9a758d",
    "complex": "1b808018b8d9916db3d47d5aa2ef18377a3549a56901a474156f799824cdf3b4",
}
PROMPTS_PER_SPLIT = 300
#: dataset name -> the pinned file of one split
COMPBENCH_FILES = {
    f"{PREFIX}-{split}": RemoteFile(f"examples/dataset/{split}_val.txt", digest, REPOSITORY, COMMIT, f"{split}.txt")
    for split, digest in SPLITS.items()
}
NAMES = (*COMPBENCH_FILES, PREFIX)


def compbench_dataset(name: str) -> Path:
    """The local file of ``t2i-compbench-<split>`` or of ``t2i-compbench`` (all splits), fetched when not cached."""
    if name in COMPBENCH_FILES:
        return fetch_checked(name, COMPBENCH_FILES[name])
    if name != PREFIX:
        raise UserError(f"unknown T2I-CompBench set {name!r}; choose from {', '.join(NAMES)}")
    splits = {}
    for dataset, spec in COMPBENCH_FILES.items():
        text = fetch_checked(dataset, spec).read_text(encoding="utf-8")
        splits[spec.name.removesuffix(".txt")] = [line.strip() for line in text.splitlines() if line.strip()]
    data = (json.dumps(splits, indent=1, ensure_ascii=False) + "\n").encode("utf-8")
    path = next(iter(COMPBENCH_FILES.values())).cached_path.with_name(f"{PREFIX}.json")
    if not path.is_file() or path.read_bytes() != data:  # rebuilt from the checked files whenever it differs
        write_bytes_atomic(path, data)
    return path
