"""Run folders on disk: where a run lives, its lock, its atomic save, and what a folder holds.

Layout of one run: ``<root>/<prompt folder>/<seed>/`` with ``best.png``, ``initial.png``, optional
``epochs/epoch_XXX.png``, ``best_latent.safetensors``, ``result.json`` (the :class:`~noise_diffusion.records.RunRecord`)
and the score files of :mod:`noise_diffusion.scorefiles`. ``result.json`` is removed first and written last, each file
atomically (:mod:`noise_diffusion.atomic`): a run killed at any moment leaves no half-written file that counts as
finished. A folder counts as a finished run only when :meth:`RunFolder.state` finds its record complete, the files it
names decodable, and the recorded prompt and seed those that the folder's name stands for.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from PIL import Image

from .atomic import (  # noqa: F401 (re-exported: the result layer's writers)
    TEMP_SUFFIX, read_json, remove_path, remove_temp_files, save_image_atomic, write_bytes_atomic, write_json_atomic,
)
from .errors import UserError
from .names import safe_folder_name
from .records import (  # noqa: F401 (re-exported)
    MAX_SEED, RESULT_FILE, OutdatedRecordError, RecordError, RunFiles, RunRecord, check_seed, first_line,
)
from .scorefiles import PREFIXES

LOCK_FILE = ".lock"
LATENT_FILE = RunFiles().latent


def run_folder(root: str | os.PathLike, prompt: str, seed: int) -> Path:
    return Path(root) / safe_folder_name(prompt) / str(int(seed))


def check_root(root: str | os.PathLike) -> Path:
    """``root`` as a path; :class:`UserError` when it is empty (which would mean the current folder)."""
    if not str(root).strip():
        raise UserError("the result folder is empty: give --result_root a folder name")
    return Path(root)


def check_writable(root: str | os.PathLike) -> Path:
    """Create ``root`` if needed and make sure files can be written there; :class:`UserError` otherwise."""
    root = check_root(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{secrets.token_hex(6)}{TEMP_SUFFIX}"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        os.unlink(probe)
    except OSError as error:
        raise UserError(f"result folder {str(root)!r} is not writable: {error.strerror or error}") from error
    return root


# ---------------------------------------------------------------------------------------------- what is finished

@dataclass(frozen=True)
class RunState:
    """What a run folder holds: ``missing`` (no result.json), ``invalid`` (a damaged run, to be redone),
    ``outdated`` (a run in an earlier version's layout: redone only with ``--overwrite``), ``other`` (an intact run
    of another prompt, seed or location, never to be taken or overwritten) or ``finished``."""

    status: str
    reason: str = ""
    record: RunRecord | None = None

    @property
    def finished(self) -> bool:
        return self.status == "finished"


@dataclass(frozen=True)
class RunFolder:
    """The folder of one run."""

    path: Path

    @classmethod
    def of(cls, root: str | os.PathLike, prompt: str, seed: int) -> "RunFolder":
        return cls(run_folder(root, prompt, seed))

    def lock(self) -> contextlib.AbstractContextManager[bool]:
        """Hold this folder's lock (see :func:`job_lock`)."""
        return job_lock(self.path)

    def state(self, prompt: str | None = None, seed: int | None = None) -> RunState:
        """Check the folder: the record, that the files it names decode, and whose run it is.

        The record must belong where it lies (its prompt's folder name and its seed are the folder's) and, when
        given, to ``prompt`` and ``seed``.
        """
        if not (self.path / RESULT_FILE).exists():
            return RunState("missing", f"{self.path / RESULT_FILE} does not exist")
        try:
            record = RunRecord.load(self.path)
        except OutdatedRecordError as error:
            return RunState("outdated", error.reason)
        except RecordError as error:
            return RunState("invalid", error.reason)
        problem = self.files_problem(record.files)
        if problem is not None:
            return RunState("invalid", f"{self.path / RESULT_FILE}: {problem}")
        holds = f"{self.path} holds the run of {record.prompt!r} seed {record.seed}"
        if (safe_folder_name(record.prompt), str(record.seed)) != (self.path.parent.name, self.path.name):
            return RunState("other", f"{holds}, which belongs in another folder", record)
        if (prompt is not None and record.prompt != prompt) or (seed is not None and record.seed != int(seed)):
            return RunState("other", f"{holds}, not of {prompt!r} seed {seed}", record)
        return RunState("finished", "", record)

    def files_problem(self, files: RunFiles) -> str | None:
        """What is wrong with the files a record names (None when every image decodes and the latent loads)."""
        for name in (files.initial, files.best):
            try:
                with Image.open(self.path / name) as image:
                    image.load()  # decodes every row: a truncated PNG fails here
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
                return f"{name} does not decode ({first_line(error)})"
        if files.latent is not None:
            from safetensors import SafetensorError, safe_open

            try:
                with safe_open(str(self.path / files.latent), framework="pt") as handle:
                    handle.get_tensor("latent")
            except (OSError, ValueError, SafetensorError, KeyError) as error:
                return f"{files.latent} does not load ({first_line(error)})"
        return None

    def written_since(self, moment: float) -> bool:
        try:
            return (self.path / RESULT_FILE).stat().st_mtime >= moment
        except OSError:
            return False

    def save(self, record: RunRecord, epoch_files_written: bool = False) -> Path:
        """Write a run just made (``record.images`` set): images and latent first, ``result.json`` last.

        The folder's previous ``result.json`` goes first, so a run killed while saving never leaves an old record
        beside new images; score files (of the old images), epoch images this run did not make and temporary files
        of killed writers go too. ``epoch_files_written``: the caller already saved this run's epoch images.
        """
        from safetensors.torch import save as safetensors_bytes

        from .images import tensor_to_pil

        folder, files, images = self.path, record.files, record.images
        self._clear(record, epoch_files_written)
        save_image_atomic(folder / files.best, tensor_to_pil(images.best)[0])
        save_image_atomic(folder / files.initial, tensor_to_pil(images.initial)[0])
        for epoch, image in zip(record.epochs, images.epochs):
            save_image_atomic(folder / "epochs" / f"epoch_{epoch.epoch:03d}.png", tensor_to_pil(image)[0])
        if files.latent is not None:
            write_bytes_atomic(folder / files.latent, safetensors_bytes({"latent": images.best_latent.contiguous()}))
        write_json_atomic(folder / RESULT_FILE, record.to_json())
        return folder

    def _clear(self, record: RunRecord, epoch_files_written: bool) -> None:
        """Remove what belongs to the run being replaced."""
        folder = self.path
        folder.mkdir(parents=True, exist_ok=True)
        for name in (RESULT_FILE, record.files.best, record.files.initial, LATENT_FILE):
            remove_path(folder / name)  # a directory there (a damaged run) would block the rename, too
        for prefix in PREFIXES.values():  # scores of the image being replaced
            for stale in folder.glob(f"{prefix}*.json"):
                remove_path(stale)
        remove_temp_files(folder)
        epochs_dir = folder / "epochs"
        if epochs_dir.is_dir():
            remove_temp_files(epochs_dir)
            kept = {f"epoch_{e.epoch:03d}.png" for e in record.epochs} if epoch_files_written else set()
            for image_file in epochs_dir.glob("epoch_*.png"):
                if image_file.name not in kept:
                    remove_path(image_file)


def inspect_run(folder: str | os.PathLike, prompt: str | None = None, seed: int | None = None) -> RunState:
    """What ``folder`` holds (:meth:`RunFolder.state`)."""
    return RunFolder(Path(folder)).state(prompt, seed)


def is_finished(folder: str | os.PathLike, prompt: str | None = None, seed: int | None = None) -> bool:
    """A run is finished when :func:`inspect_run` finds it intact (and, when given, of ``prompt`` and ``seed``)."""
    return inspect_run(folder, prompt, seed).finished


def save_run(folder: str | os.PathLike, result: RunRecord, context, epoch_files_written: bool = False) -> Path:
    """Save a run just made, with its :class:`~noise_diffusion.settings.RunContext` (specs, category, dataset)."""
    return RunFolder(Path(folder)).save(context.apply(result), epoch_files_written)


# ------------------------------------------------------------------------------------------------------ locks

@contextlib.contextmanager
def job_lock(folder: str | os.PathLike) -> Iterator[bool]:
    """Hold the lock of one run folder while the block runs; yields False (and holds nothing) when another process
    holds it.

    The lock is an advisory ``flock`` on ``<folder>/.lock``: the kernel releases it when its process exits in any way,
    SIGKILL included, so a crashed run never leaves a stale lock behind.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if not _try_flock(fd):
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _try_flock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks, one process per result root
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):  # a file system without locks
            _warn_no_locks(error)
            return True
        raise
    return True


_warned_no_locks = False


def _warn_no_locks(error: OSError) -> None:
    global _warned_no_locks
    if not _warned_no_locks:
        _warned_no_locks = True
        print(f"warning: no file locks on this file system ({error.strerror}): two processes on one result root could "
              f"run the same job twice", file=sys.stderr)
