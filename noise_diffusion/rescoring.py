"""Re-scoring of saved images: the saved ``initial.png`` and ``best.png`` of finished runs scored again into a score
file (:mod:`noise_diffusion.scorefiles`), by a verifier other than the one that guided the search
(``heldout_<verifier>.json``, :func:`rescore_held_out`) or by the guiding verifier through PIL (``png_<verifier>.json``).

Each folder is scored under its lock, atomically; a re-run skips folders that have the file. The best image stays the
one the guiding verifier chose, so the held-out gain shows how much of the improvement is not verifier hacking.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path
from typing import Sequence

from PIL import Image
from tqdm.auto import tqdm

from .errors import UserError
from .records import RunRecord
from .results import RunFolder, is_finished
from .scorefiles import ImageScores, ScoreFile
from .verifiers.base import check_prompts


def held_out_file(folder: str | os.PathLike, verifier: str) -> Path:
    """Where the held-out scores of ``verifier`` for one run folder are stored."""
    return ScoreFile.held_out(verifier).path(folder)


def rescore_held_out(folders: Sequence[str | os.PathLike], verifier, verifier_name: str, **options) -> int:
    """Score the saved images of ``folders`` with a held-out ``verifier`` (:func:`rescore`)."""
    return rescore(folders, verifier, ScoreFile.held_out(verifier_name), **options)


def rescore(
    folders: Sequence[str | os.PathLike],
    verifier,
    target: ScoreFile,
    *,
    batch_size: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> int:
    """Score ``initial.png`` and ``best.png`` of every finished folder with ``verifier`` into the score file
    ``target`` (a held-out verifier's, or the guiding verifier's PNG re-score).

    Folders without a finished result, and (unless ``overwrite``) folders that already have ``target``, are skipped.
    Each folder is scored under its lock, so a run being redone meanwhile never gets the old images' scores; folders
    another process holds are left out. A non-finite score is not saved; after the other folders, :class:`UserError`
    names such folders. Returns the number of folders scored.
    """
    todo = rescore_todo(folders, target, overwrite)
    check_prompts(verifier, [RunRecord.load(f).prompt for f in todo])
    failures, scored_count, step = [], 0, max(1, batch_size)
    bar = tqdm(total=len(todo), disable=not progress, desc=f"{target.label} {target.verifier}", unit="run",
               dynamic_ncols=True)
    try:
        for start in range(0, len(todo), step):
            with ExitStack() as locks:
                chunk = [f for f in todo[start:start + step] if locks.enter_context(RunFolder(f).lock())]
                scored_count += _rescore_chunk(chunk, verifier, target, overwrite, failures)
            bar.update(min(len(todo), start + step) - start)
    finally:
        bar.close()
    if failures:
        raise UserError(f"{target.label} verifier {target.verifier!r} gave non-finite scores, not saved, for "
                        f"{len(failures)} folder(s): {', '.join(failures[:3])}{', ...' if len(failures) > 3 else ''}")
    return scored_count


def _rescore_chunk(chunk: list[Path], verifier, target: ScoreFile, overwrite: bool, failures: list[str]) -> int:
    """Score the locked folders of ``chunk`` that still need it; returns how many were saved."""
    chunk = [f for f in chunk if f in rescore_todo([f], target, overwrite)]  # it may have changed before its lock
    if not chunk:
        return 0
    records = [RunRecord.load(f) for f in chunk]
    images, prompts = [], []
    for folder, record in zip(chunk, records):
        for name in (record.files.initial, record.files.best):
            with Image.open(folder / name) as image:
                images.append(image.convert("RGB"))
            prompts.append(record.prompt)
    scores = verifier.score_pil(images, prompts).tolist()
    saved = 0
    for k, folder in enumerate(chunk):
        scored = ImageScores(target.verifier, scores[2 * k], scores[2 * k + 1])
        if scored.problem():
            failures.append(str(folder))
            continue
        target.write(folder, scored)
        saved += 1
    return saved


def rescore_todo(folders: Sequence[str | os.PathLike], target: ScoreFile, overwrite: bool = False) -> list[Path]:
    """The finished folders that still lack (or, with ``overwrite``, have) the score file ``target``."""
    return [Path(f) for f in folders if is_finished(f) and (overwrite or target.read(f) is None)]


def held_out_todo(folders: Sequence[str | os.PathLike], verifier: str, overwrite: bool = False) -> list[Path]:
    """The finished folders that still lack (or, with ``overwrite``, have) held-out scores by ``verifier``."""
    return rescore_todo(folders, ScoreFile.held_out(verifier), overwrite)
