"""Safe reading of published checkpoints (safetensors, or ``torch.load(weights_only=True)`` for ``.bin`` shards).

Checkpoints are folders (or Hub repos) in the usual transformers layout: one ``model.safetensors`` /
``pytorch_model.bin`` file, or shards listed by an ``*.index.json``. Pickles are never unpickled beyond tensors.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import Tensor

from ...errors import UserError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def resolve_folder(name_or_path: str) -> Path:
    """A local folder as is, or a Hub repo downloaded (config, index and weights; safetensors preferred)."""
    if os.path.isdir(name_or_path):
        return Path(name_or_path)
    from huggingface_hub import snapshot_download

    folder = Path(snapshot_download(name_or_path, allow_patterns=["*.json", "*.safetensors", "*.model"]))
    if not list(folder.glob("*.safetensors")):
        folder = Path(snapshot_download(name_or_path, allow_patterns=["*.json", "pytorch_model*.bin", "*.model"]))
    return folder


def weight_files(folder: Path) -> list[Path]:
    for name in WEIGHT_FILES:
        index = folder / f"{name}.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            return [folder / shard for shard in shards]
        if (folder / name).is_file():
            return [folder / name]
    raise UserError(f"no weights in {str(folder)!r}: expected {' or '.join(WEIGHT_FILES)} (or a sharded index)")


def read_state_dict(folder: Path, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """All tensors of the checkpoint in ``folder``, read without executing pickled code; floating-point tensors are
    cast to ``dtype`` shard by shard (an 11B checkpoint stored in float32 then never sits whole in memory at 4 bytes
    per weight)."""
    state: dict[str, Tensor] = {}
    for path in weight_files(folder):
        if not path.is_file():
            raise UserError(f"checkpoint shard {str(path)!r} is missing")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            shard = load_file(str(path))
        else:
            try:
                shard = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # files in torch's legacy (non-zip) format cannot be memory-mapped
                shard = torch.load(path, map_location="cpu", weights_only=True)
        if dtype is not None:
            shard = {k: v.to(dtype) if v.is_floating_point() else v for k, v in shard.items()}
        state.update(shard)
    return state


def describe_keys(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more
