"""Reading a model folder's own JSON files (``model_index.json``, ``config.json``) with one-line errors."""

from __future__ import annotations

import json
import os

from .errors import UserError


def read_json_object(path: str | os.PathLike) -> dict:
    """A JSON object from a model file; :class:`UserError` naming the file when it is broken or not an object."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError, absurd nesting
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{path} is not valid JSON ({text})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def string_field(path: str | os.PathLike, field: str) -> str:
    """``field`` of the JSON object in ``path`` when it is a string, else ``""``."""
    value = read_json_object(path).get(field, "")
    return value if isinstance(value, str) else ""


def folder_file(folder: str, file_name: str, what: str) -> str:
    """The path of ``file_name`` in the model folder ``folder``; :class:`UserError` when the folder lacks it."""
    path = os.path.join(folder, file_name)
    if not os.path.isfile(path):
        raise UserError(f"{what} folder {folder!r} has no {file_name}")
    return path
