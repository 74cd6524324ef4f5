"""Which prompt tokens the attention baselines strengthen: the subjects' positions in the text encoder's tokens.

Datasets carry them (``indices``, start token = 0). For a free prompt they are computed: the prompt is split at its
first relation word (``and``, ``with``, ``on``, ``under``, ``left of``, ...), the subjects are the last word before it
and the last word of the prompt ("a red car under a blue bench" -> car, bench), and each subject's position is that of
its last token in the prompt's tokenisation (for a word split into several BPE pieces, the piece that closes it).
"""

from __future__ import annotations

import re
from typing import Sequence

from ..errors import UserError

#: relation words between the two subjects, longest first so "on top of" wins over "on"
RELATIONS = tuple(sorted((
    "and", "with", "on", "under", "below", "above", "over", "beneath", "behind", "beside", "near", "in", "inside",
    "next to", "left of", "right of", "to the left of", "to the right of", "on top of", "in front of", "on the left of",
    "on the right of",
), key=lambda r: -len(r.split())))
ARTICLES = ("a", "an", "the")


def subject_words(prompt: str) -> tuple[int, int]:
    """Word positions (0-based) of the two subjects; :class:`UserError` when no relation word separates two nouns."""
    words = _words(prompt)
    for start in range(1, len(words)):
        for relation in RELATIONS:
            parts = relation.split()
            if [w.lower() for w in words[start:start + len(parts)]] == parts:
                first, second = start - 1, len(words) - 1
                after = start + len(parts)
                if words[first].lower() not in ARTICLES and second >= after and words[second].lower() not in ARTICLES:
                    return first, second
    raise UserError(f"cannot find two subjects in {prompt!r} (expected e.g. 'a cat and a dog' or 'a cup on a table'); "
                    f"give their token positions with --token_indices")


def subject_token_indices(tokenizer, prompt: str) -> list[int]:
    """Token positions (start token = 0) of the prompt's two subjects for ``tokenizer`` (a CLIP tokenizer)."""
    words = _words(prompt)
    ends, position = [], 0
    for word in words:
        position += len(tokenizer(word, add_special_tokens=False).input_ids)
        ends.append(position)  # the last token of this word, counting the start token as 0
    full = tokenizer(prompt).input_ids
    if len(full) != position + 2:
        raise UserError(f"cannot locate the words of {prompt!r} in its tokens; give --token_indices")
    first, second = subject_words(prompt)
    return check_indices(tokenizer, prompt, [ends[first], ends[second]])


def check_indices(tokenizer, prompt: str, indices: Sequence[int]) -> list[int]:
    """Indices must point at tokens of the prompt itself (not the start, end or padding tokens)."""
    indices = [int(i) for i in indices]
    length = len(tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids)
    last = min(length - 2, tokenizer.model_max_length - 2)
    if not indices:
        raise UserError(f"no token indices for {prompt!r}")
    bad = [i for i in indices if not 1 <= i <= last]
    if bad:
        raise UserError(f"token indices {bad} are outside the prompt {prompt!r} (its tokens are 1..{last})")
    return indices


def _words(prompt: str) -> list[str]:
    return re.findall(r"[A-Za-z0-9']+", prompt)
