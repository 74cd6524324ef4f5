"""Safe file and folder names for free text (prompts, verifier names)."""

from __future__ import annotations

import hashlib
import re

MAX_NAME = 72  # + "-" + 16 hex digits: at most 89 characters
#: Hex digits of SHA-256 in a name: 64 bits, so that distinct texts never share a name in practice
#: (32 bits collide within ~10^5 prompts).
DIGEST_HEX = 16


def safe_folder_name(text: str) -> str:
    """A name for ``text``: word characters only, bounded length, plus 64 bits of SHA-256 for uniqueness.

    No separators and no ``..`` can survive, so a prompt such as ``../../x`` stays inside the result root.
    """
    slug = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:MAX_NAME] or "prompt"
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:DIGEST_HEX]
    return f"{slug}-{digest}"
