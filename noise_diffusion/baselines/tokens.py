"""Which prompt tokens the attention baselines strengthen: the subjects' positions in the text encoder's tokens.

Datasets carry them (``indices``, start token = 0). For a free prompt they are computed by a word rule:

- the prompt splits at its first *verb* or *relation* (``and``, ``with``, ``on``, ``under``, ``next to``, ``on the
  right of``, ``past``, ...). A verb is a form of *be* (``is``, ``was``, ...), a common irregular past (``sat``,
  ``lay``, ...), or a word ending in -ed/-ing right before a relation or an article (an adverb may come between), not
  right after an article ("the sleek black laptop sat on", "the crisp white sheet covered the"), so participles used
  as adjectives ("the striped rug") stay in their noun phrase. ``and`` between two colours ("a black and white cat")
  does not split;
- the first subject is the last word before the split, the second the last word of the next noun phrase after it
  (the phrase ends at the next relation, verb, article, clause word or punctuation, else at the end of the prompt; a
  phrase with no article that runs into a relation or an article ends in its verb, which is dropped): "a red car
  under a blue bench" -> car, bench; "A man is holding a book and reading" -> man, book; "The wooden ladder and
  glass jar hold the screws" -> ladder, jar;
- in "X of Y" the subject is X ("the rough bark of the tree" -> bark), except after a word of quantity ("a group of
  friends", "a piece of lasagna" -> friends, lasagna).

Each subject's position is that of its last token in the prompt's tokenisation (for a word split into several BPE
pieces, the piece that closes it).
"""

from __future__ import annotations

import re
from typing import Sequence

from ..errors import UserError

#: relation words between the two subjects, longest first so "on top of" wins over "on"
RELATIONS = tuple(sorted((
    "and", "with", "on", "under", "below", "above", "over", "beneath", "behind", "beside", "near", "in", "inside",
    "next to", "left of", "right of", "to the left of", "to the right of", "on top of", "in front of", "on the left of",
    "on the right of", "on the top of", "on the bottom of", "on side of", "on the side of", "past", "through", "across",
    "into", "onto", "towards", "toward", "along", "around", "against", "at", "between", "among", "by", "from",
    "up", "down", "out of", "before", "after", "during", "beyond", "for", "about",
), key=lambda r: -len(r.split())))
ARTICLES = ("a", "an", "the", "its", "their", "his", "her", "my", "our", "your", "some", "two", "three")
BE = ("is", "are", "was", "were", "be", "been", "being")
IRREGULAR_VERBS = (
    "sat", "sits", "lay", "lies", "fell", "flew", "spun", "lit", "swam", "wrote", "shone", "stood", "stands", "drove",
    "sped", "slept", "hung", "hangs", "strode", "ran", "woke", "spread", "grew", "held", "blew", "caught", "threw",
    "took", "led", "broke", "sang", "ate", "drank", "made", "cast", "found", "sank", "swung", "shook", "struck", "rang",
    "burst", "slid", "crept", "leapt", "clung", "dug", "hid", "felt", "kept",
)
#: nouns that end like an adverb
NOUNS_IN_LY = ("butterfly", "dragonfly", "firefly", "fly", "lily", "jelly", "belly", "family", "holly", "bully",
               "assembly", "supply")
#: words that are verbs only before a relation or an article ("the moon rose above", "a red rose and")
VERBS_OR_NOUNS = ("rose",)
#: nouns that end like an -ing or -ed verb form
NOUNS_LIKE_VERBS = ("ring", "earring", "string", "spring", "thing", "ceiling", "building", "painting", "clothing",
                    "wedding", "evening", "morning", "pudding", "icing", "railing", "swing", "wing", "king", "sling",
                    "bed", "shed", "sled", "red")
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "gray", "grey",
           "silver", "gold", "golden", "beige", "tan")
#: words of quantity before "of" (containers are not: "a bottle of water" is drawn as a bottle)
QUANTITIES = ("group", "pair", "couple", "bunch", "pile", "piece", "slice", "herd", "flock", "crowd", "set", "stack",
              "row", "team", "lot", "loaf")
#: words that end a noun phrase besides relations, verbs and punctuation
CLAUSE_WORDS = ("that", "which", "who", "while", "as", "to", "when", "where", "or", "but", "so")


def subject_words(prompt: str) -> tuple[int, int]:
    """Word positions (0-based) of the two subjects; :class:`UserError` when no relation word separates two nouns."""
    words, stops = _marked_words(prompt)
    lower = [w.lower() for w in words]
    split = _first_split(lower, stops)
    if split is not None:
        at, after = split
        first = _head(lower, 0, at)
        second = _next_phrase_head(lower, stops, after)
        if first is not None and second is not None:
            return first, second
    raise UserError(f"cannot find two subjects in {prompt!r} (expected e.g. 'a cat and a dog' or 'a cup on a table'); "
                    f"give their token positions with --token_indices")


def _first_split(lower: list[str], stops: set[int]) -> tuple[int, int] | None:
    """(where the first verb or relation starts, where the words after it start), or None."""
    for at in range(1, len(lower)):
        if at - 1 in stops:  # punctuation right before: a new clause, not the subject's verb
            continue
        relation = _relation_at(lower, at)
        if relation and not (lower[at] == "and" and _colour_and(lower, at)):
            return at, at + relation
        if _is_verb(lower, at):
            return at, at + 1
    return None


def _next_phrase_head(lower: list[str], stops: set[int], start: int) -> int | None:
    """The head of the first noun phrase at or after ``start`` (skipping verbs, relations, articles and adverbs)."""
    position = start
    while position < len(lower):
        relation = _relation_at(lower, position)
        if relation:
            position += relation
        elif _is_verb(lower, position) or lower[position] in (*BE, *ARTICLES, "to"):
            position += 1
        elif lower[position - 1] in BE and _verb_form(lower[position]):  # "is doing", "was nestled"
            position += 1
        elif _adverb(lower[position]) and lower[position - 1] not in ARTICLES:
            position += 1
        else:
            break
    if position >= len(lower):
        return None
    end = position + 1
    while end < len(lower) and not _ends_phrase(lower, end):
        adjective_comma = end - 1 == position and lower[position - 1] in ARTICLES and not lower[end].endswith(
            ("ing", "ed"))  # "the crisp, dry bread", not "the horizon, painting the sky"
        if end - 1 in stops and not adjective_comma:
            break
        end += 1
    bare = not any(lower[i] in ARTICLES for i in range(position - 1, end))
    if bare and end - position >= 2 and end < len(lower) and end - 1 not in stops and lower[end] != "and" and \
            _relation_or_article(lower, end):
        end -= 1  # "the rug and leather ottoman rest on the floor": a bare phrase's last word is its verb
    return _head(lower, position, end)


def _ends_phrase(lower: list[str], at: int) -> bool:
    if lower[at] == "and" and _colour_and(lower, at):
        return False
    if lower[at] == "of":
        return False  # "X of Y" stays one phrase; _head picks X or Y
    if lower[at] in ARTICLES:
        return lower[at - 1] != "of"  # an article starts the next phrase ("jar hold the screws")
    return bool(_relation_at(lower, at)) or lower[at] in BE or lower[at] in CLAUSE_WORDS or _is_verb(lower, at)


def _head(lower: list[str], start: int, end: int) -> int | None:
    """The subject word of the phrase ``lower[start:end]``: its last word, or X in "X of Y" (Y after a quantity)."""
    span = [i for i in range(start, end) if lower[i] not in ARTICLES]
    if len(span) > 1 and _adverb(lower[span[-1]]) and end < len(lower) and _is_verb(lower, end):
        span.pop()  # an adverb before the verb: "the detective carefully examined"
    if not span:
        return None
    if "of" in lower[start:end]:
        of = lower.index("of", start, end)
        if of - 1 >= start and lower[of - 1] not in QUANTITIES and lower[of - 1] not in ARTICLES:
            return of - 1
    last = span[-1]
    return None if lower[last] in ("of", "and") else last


def _relation_at(lower: list[str], at: int) -> int:
    """The number of words of the relation starting at ``at`` (0 for none)."""
    for relation in RELATIONS:
        parts = relation.split()
        if lower[at:at + len(parts)] == parts:
            return len(parts)
    return 0


def _is_verb(lower: list[str], at: int) -> bool:
    word = lower[at]
    if word in BE or word in IRREGULAR_VERBS:
        return True
    if not (_verb_form(word) or word in VERBS_OR_NOUNS) or lower[at - 1] in ARTICLES or at + 1 >= len(lower):
        return False
    after = at + 2 if _adverb(lower[at + 1]) and at + 2 < len(lower) else at + 1  # "floated lazily in"
    return lower[after] != "and" and _relation_or_article(lower, after)


def _verb_form(word: str) -> bool:
    if word in NOUNS_LIKE_VERBS:
        return False
    return (word.endswith("ed") and len(word) >= 5 and not word.endswith("eed")) or (
        word.endswith("ing") and len(word) >= 5)


def _relation_or_article(lower: list[str], at: int) -> bool:
    return bool(_relation_at(lower, at)) or lower[at] in ARTICLES


def _adverb(word: str) -> bool:
    return word.endswith("ly") and word not in NOUNS_IN_LY


def _colour_and(lower: list[str], at: int) -> bool:
    return 0 < at < len(lower) - 1 and lower[at - 1] in COLOURS and lower[at + 1] in COLOURS


def require_subjects(prompts: Sequence[str], method: str) -> None:
    """Before an attention baseline runs: :class:`UserError` when the word rule finds no subjects in some prompts."""
    missing = []
    for prompt in dict.fromkeys(prompts):
        try:
            subject_words(prompt)
        except UserError:
            missing.append(prompt)
    if missing:
        raise UserError(f"{method} needs two subject words, and the word rule finds none in {len(missing)} "
                        f"prompt{'s' if len(missing) > 1 else ''} (e.g. {missing[0]!r}): give their 'indices' in the "
                        f"dataset file, or run {method} on other prompts (the other methods run these)")


def subject_token_indices(tokenizer, prompt: str) -> list[int]:
    """Token positions (start token = 0) of the prompt's two subjects for ``tokenizer`` (a CLIP tokenizer).

    The prompt is tokenised piece by piece (its words and its runs of punctuation, where CLIP's own pre-tokeniser
    splits too), so that a word's last token is known even in a sentence with commas and a full stop.
    """
    ends, position = [], 0
    for match in re.finditer(r"([A-Za-z0-9']+)|[^\sA-Za-z0-9']+", prompt):
        position += len(tokenizer(match.group(), add_special_tokens=False).input_ids)
        if match.group(1):
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


def word_list(prompt: str) -> list[str]:
    """The prompt's words as :func:`subject_words` counts them (punctuation dropped, hyphenated words split)."""
    return re.findall(r"[A-Za-z0-9']+", prompt)


def _marked_words(prompt: str) -> tuple[list[str], set[int]]:
    """The words of :func:`word_list`, and the positions of those followed by punctuation that ends a phrase."""
    words, stops = [], set()
    for match in re.finditer(r"[A-Za-z0-9']+|[,.;:!?()]", prompt):
        if match.group()[0].isalnum() or match.group()[0] == "'":
            words.append(match.group())
        elif words:
            stops.add(len(words) - 1)
    return words, stops
