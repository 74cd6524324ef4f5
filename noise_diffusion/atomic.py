"""Files written atomically: a uniquely named temporary file beside the target, then ``os.replace``.

A writer killed at any moment leaves the old file or the new one, never half of one; the temporary files of killed
writers are removed by :func:`remove_temp_files`.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from PIL import Image

TEMP_SUFFIX = ".tmp"


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    write_bytes_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False).encode("utf-8"))


def save_image_atomic(path: str | os.PathLike, image: Image.Image) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())


def write_bytes_atomic(path: str | os.PathLike, payload: bytes) -> None:
    """Write ``payload`` to a uniquely named temporary file beside ``path``, then rename it over ``path``.

    The temporary file is created with mode 0666 minus the umask (as ``open`` would), so results are as readable as
    any other file the user writes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        remove_path(tmp)
        raise


def remove_temp_files(folder: str | os.PathLike, older_than: float = 0.0) -> int:
    """Delete the temporary files that killed writers left in ``folder``; returns how many.

    Inside a job folder (written only under its lock) every temporary file is stale; in shared folders pass
    ``older_than`` seconds, longer than any write takes, so that a concurrent writer's file survives.
    """
    removed, now = 0, time.time()
    for tmp in Path(folder).glob(f".*{TEMP_SUFFIX}"):
        try:
            if older_than <= 0 or now - tmp.stat().st_mtime > older_than:
                tmp.unlink()
                removed += 1
        except OSError:
            pass
    return removed


def remove_path(path: str | os.PathLike) -> None:
    """Delete a file, or a directory that stands where a file belongs; nothing when there is none."""
    path = Path(path)
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except OSError:
        pass
