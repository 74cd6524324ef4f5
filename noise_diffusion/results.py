"""Result folders: safe names, atomic writes, and the ``result.json`` record that marks a run as finished.

Layout of one run: ``<root>/<safe prompt folder>/<seed>/`` with ``best.png``, ``initial.png``, optional
``epochs/epoch_XXX.png``, ``best_latent.safetensors`` and ``result.json``. ``result.json`` is written last and
atomically (temporary file + ``os.replace``): a run killed at any moment leaves no half-written file that counts as
finished.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import re
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image

from .errors import UserError

RESULT_FILE = "result.json"
MAX_NAME = 80


def safe_folder_name(prompt: str) -> str:
    """A folder name for a prompt: word characters only, bounded length, plus a short hash for uniqueness.

    No separators and no ``..`` can survive, so a prompt such as ``../../x`` stays inside the result root.
    """
    slug = re.sub(r"[^A-Za-z0-9]+", "_", prompt).strip("_")[:MAX_NAME] or "prompt"
    digest = hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:8]
    return f"{slug}-{digest}"


def run_folder(root: str | os.PathLike, prompt: str, seed: int) -> Path:
    return Path(root) / safe_folder_name(prompt) / str(int(seed))


def is_finished(folder: str | os.PathLike) -> bool:
    """A run is finished when its ``result.json`` exists and parses."""
    try:
        read_json(Path(folder) / RESULT_FILE)
    except (OSError, ValueError):
        return False
    return True


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    path = Path(path)
    write_bytes_atomic(path, json.dumps(data, indent=2, ensure_ascii=False).encode("utf-8"))


def save_image_atomic(path: str | os.PathLike, image: Image.Image) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())


def write_bytes_atomic(path: str | os.PathLike, payload: bytes) -> None:
    """Write ``payload`` to a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def check_writable(root: str | os.PathLike) -> Path:
    """Create ``root`` if needed and make sure files can be written there; :class:`UserError` otherwise."""
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=root, prefix=".write-test-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as error:
        raise UserError(f"result folder {str(root)!r} is not writable: {error.strerror or error}") from error
    return root


def library_versions() -> dict[str, str]:
    import importlib.metadata as metadata

    versions = {"python": platform.python_version()}
    for package in ("torch", "diffusers", "transformers", "accelerate", "noise-diffusion"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def save_run(folder: str | os.PathLike, result, config: dict, save_latent: bool = True) -> Path:
    """Write one :class:`~noise_diffusion.optimize.RunResult`: images and latent first, ``result.json`` last."""
    from safetensors.torch import save_file

    from .images import tensor_to_pil

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_image_atomic(folder / "best.png", tensor_to_pil(result.best_image)[0])
    save_image_atomic(folder / "initial.png", tensor_to_pil(result.initial_image)[0])
    for record, image in zip(result.epochs, result.epoch_images):
        save_image_atomic(folder / "epochs" / f"epoch_{record['epoch']:03d}.png", tensor_to_pil(image)[0])
    if save_latent:
        tmp = folder / ".best_latent.safetensors.tmp"
        save_file({"latent": result.best_latent.contiguous()}, str(tmp))
        os.replace(tmp, folder / "best_latent.safetensors")
    record = result.record()
    record.update(
        {
            "files": {"best": "best.png", "initial": "initial.png"},
            "config": config,
            "versions": library_versions(),
        }
    )
    write_json_atomic(folder / RESULT_FILE, record)
    return folder
