"""Result folders: safe names, atomic writes, per-job locks, and the ``result.json`` record that marks a run finished.

Layout of one run: ``<root>/<prompt folder>/<seed>/`` with ``best.png``, ``initial.png``, optional
``epochs/epoch_XXX.png``, ``best_latent.safetensors`` and ``result.json``. ``result.json`` is removed first and written
last, each file atomically (a uniquely named temporary file + ``os.replace``): a run killed at any moment leaves no
half-written file that counts as finished. A folder counts as a finished run only when :func:`inspect_run` finds its
``result.json`` complete (:func:`record_problem`), the files it names decodable, and the recorded prompt and seed
those that the folder's name stands for.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import math
import os
import platform
import re
import secrets
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from PIL import Image

from .errors import UserError

if TYPE_CHECKING:
    from torch import Tensor

RESULT_FILE = "result.json"
LATENT_FILE = "best_latent.safetensors"
LOCK_FILE = ".lock"
HELD_OUT_PREFIX = "heldout_"
#: scores of the saved PNGs by the *guiding* verifier (the same path as a held-out verifier's), so that every method's
#: row is scored alike: from its image file, through PIL
PNG_PREFIX = "png_"
MAX_NAME = 72  # + "-" + 16 hex digits: at most 89 characters
#: Hex digits of SHA-256 in a folder name: 64 bits, so that distinct prompts never share a folder in practice
#: (32 bits collide within ~10^5 prompts).
DIGEST_HEX = 16
TEMP_SUFFIX = ".tmp"
#: Seeds are those of torch.Generator.manual_seed: 0 .. 2**64 - 1.
MAX_SEED = 2**64 - 1


@dataclass
class RunResult:
    """Outcome of one (prompt, seed): the best image with its latent and epoch, and one record per scored latent."""

    prompt: str
    seed: int
    initial_image: Tensor  # [3, H, W] in [0, 1], CPU
    initial_score: float
    best_image: Tensor
    best_latent: Tensor  # standard-normal initial latent that generates best_image, CPU float32
    best_score: float
    best_epoch: int
    epochs: list[dict] = field(default_factory=list)
    compute: dict = field(default_factory=dict)
    epoch_images: list[Tensor] = field(default_factory=list)
    seconds: float = 0.0
    failure: str | None = None  # why the run stopped unfinished (a non-finite score); such a run is never saved

    def record(self) -> dict:
        """JSON-ready summary (no tensors)."""
        return {
            "prompt": self.prompt,
            "seed": self.seed,
            "initial_score": self.initial_score,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "epochs": self.epochs,
            "compute": self.compute,
            "seconds": self.seconds,
        }

def safe_folder_name(prompt: str) -> str:
    """A folder name for a prompt: word characters only, bounded length, plus 64 bits of SHA-256 for uniqueness.

    No separators and no ``..`` can survive, so a prompt such as ``../../x`` stays inside the result root.
    """
    slug = re.sub(r"[^A-Za-z0-9]+", "_", prompt).strip("_")[:MAX_NAME] or "prompt"
    digest = hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:DIGEST_HEX]
    return f"{slug}-{digest}"


def legacy_folder_name(prompt: str) -> str:
    """The folder name that earlier versions gave a prompt (80-character slug, 32 bits of SHA-1), which distinct
    prompts could share."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", prompt).strip("_")[:80] or "prompt"
    return f"{slug}-{hashlib.sha1(prompt.encode('utf-8')).hexdigest()[:8]}"


def adopt_legacy_run(root: str | os.PathLike, prompt: str, seed: int) -> bool:
    """Move a run that an earlier version finished under :func:`legacy_folder_name` to its folder, when it is intact
    and of exactly this prompt and seed (so upgrading loses no finished run); True when one was moved."""
    old = Path(root) / legacy_folder_name(prompt) / str(int(seed))
    new = run_folder(root, prompt, seed)
    if not (old / RESULT_FILE).is_file() or (new / RESULT_FILE).exists():
        return False
    try:
        record = read_json(old / RESULT_FILE)
    except (OSError, ValueError, RecursionError):
        return False
    if (record_problem(record) is not None or files_problem(old, record) is not None
            or record["prompt"] != prompt or record["seed"] != int(seed)):
        return False  # damaged, or another prompt's run that shared the folder: left where it is
    try:
        if new.is_dir():  # only a lock or temporary files: nothing of a run
            if any(p.name != LOCK_FILE and not p.name.endswith(TEMP_SUFFIX) for p in new.iterdir()):
                return False
            for p in new.iterdir():
                p.unlink()
            new.rmdir()
        new.parent.mkdir(parents=True, exist_ok=True)
        os.rename(old, new)
    except OSError:  # e.g. another process moved it first
        return False
    with contextlib.suppress(OSError):
        old.parent.rmdir()  # when empty
    return True


def check_seed(seed: int) -> int:
    """``seed`` as an int if torch's generators accept it, :class:`UserError` otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise UserError(f"seed must be an integer from 0 to 2**64-1, got {seed!r}")
    return seed


def run_folder(root: str | os.PathLike, prompt: str, seed: int) -> Path:
    return Path(root) / safe_folder_name(prompt) / str(int(seed))


# ---------------------------------------------------------------------------------------------- what is finished

@dataclass(frozen=True)
class RunState:
    """What a run folder holds: ``missing`` (no result.json), ``invalid`` (a damaged run, to be redone), ``other``
    (an intact run of another prompt, seed or location, never to be taken or overwritten) or ``finished``."""

    status: str
    reason: str = ""
    record: dict | None = None

    @property
    def finished(self) -> bool:
        return self.status == "finished"


def inspect_run(folder: str | os.PathLike, prompt: str | None = None, seed: int | None = None) -> RunState:
    """Check one run folder: the record's schema, that the files it names decode, and whose run it is.

    The record must belong where it lies (its prompt's folder name and its seed are the folder's) and, when given, to
    ``prompt`` and ``seed``.
    """
    folder = Path(folder)
    path = folder / RESULT_FILE
    if not path.exists():
        return RunState("missing", f"{path} does not exist")
    try:
        record = read_json(path)
    except (OSError, ValueError, RecursionError) as error:
        return RunState("invalid", f"{path} is unreadable ({_first_line(error)})")
    problem = record_problem(record)
    if problem is None:
        problem = files_problem(folder, record)
    if problem is not None:
        return RunState("invalid", f"{path}: {problem}")
    record = upgrade_record(record)
    where = (folder.parent.name, folder.name)
    if (safe_folder_name(record["prompt"]), str(record["seed"])) != where:
        return RunState("other", f"{folder} holds the run of {record['prompt']!r} seed {record['seed']}, which "
                                 f"belongs in another folder", record)
    if (prompt is not None and record["prompt"] != prompt) or (seed is not None and record["seed"] != int(seed)):
        return RunState("other", f"{folder} holds the run of {record['prompt']!r} seed {record['seed']}, not of "
                                 f"{prompt!r} seed {seed}", record)
    return RunState("finished", "", record)


def is_finished(folder: str | os.PathLike, prompt: str | None = None, seed: int | None = None) -> bool:
    """A run is finished when :func:`inspect_run` finds it intact (and, when given, of ``prompt`` and ``seed``)."""
    return inspect_run(folder, prompt, seed).finished


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _plain_name(value: Any) -> bool:
    return (isinstance(value, str) and bool(value) and "/" not in value and "\\" not in value
            and value not in (".", ".."))


def record_problem(record: Any) -> str | None:
    """What makes ``record`` no valid ``result.json`` (None when it is one).

    Required: ``prompt`` (non-empty text), ``seed`` (0 .. 2**64-1), finite ``initial_score`` and ``best_score``,
    ``best_epoch``, ``epochs`` (one ``{"epoch", "score", ...}`` per scored latent, the first being ``initial_score``,
    the best being ``best_score`` at ``best_epoch``), ``compute`` (counts), ``files`` (plain file names of ``best``
    and ``initial``, optionally ``latent``) and ``config`` (an object).
    """
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    if not isinstance(record.get("prompt"), str) or not record["prompt"].strip():
        return "'prompt' is missing or not text"
    seed = record.get("seed")
    if not _count(seed) or seed > MAX_SEED:
        return f"'seed' must be an integer from 0 to 2**64-1, got {seed!r}"
    for key in ("initial_score", "best_score"):
        if not _number(record.get(key)):
            return f"{key!r} must be a finite number, got {record.get(key)!r}"
    if not _count(record.get("best_epoch")):
        return f"'best_epoch' must be a non-negative integer, got {record.get('best_epoch')!r}"
    epochs = record.get("epochs")
    if not isinstance(epochs, list) or not epochs:
        return "'epochs' must be a non-empty list"
    for k, entry in enumerate(epochs):
        if not isinstance(entry, dict) or not _count(entry.get("epoch")) or not _number(entry.get("score")):
            return f"epochs[{k}] must hold an integer 'epoch' and a finite 'score'"
    scores = {entry["epoch"]: entry["score"] for entry in epochs}
    if epochs[0]["epoch"] != 0 or epochs[0]["score"] != record["initial_score"]:
        return "epochs[0] is not the initial score"
    if scores.get(record["best_epoch"]) != record["best_score"] or max(scores.values()) != record["best_score"]:
        return "'best_score' is not the best epoch's score"
    compute = record.get("compute")
    # model evaluations were called unet_evals in earlier results; "seconds" is the one non-count
    if (not isinstance(compute, dict) or "generations" not in compute
            or not any(k in compute for k in ("model_evals", "unet_evals"))
            or not all(_number(v) if k == "seconds" else _count(v) for k, v in compute.items())):
        return "'compute' must count 'generations' and 'model_evals' (non-negative integers)"
    if "seconds" in record and not _number(record["seconds"]):
        return f"'seconds' must be a finite number, got {record['seconds']!r}"
    files = record.get("files")
    if not isinstance(files, dict) or not all(_plain_name(files.get(k)) for k in ("best", "initial")):
        return "'files' must name the 'best' and 'initial' images"
    if "latent" in files and not _plain_name(files["latent"]):
        return "'files' names an impossible latent file"
    if not isinstance(record.get("config"), dict):
        return "'config' must be an object"
    return None


def files_problem(folder: str | os.PathLike, record: dict) -> str | None:
    """What is wrong with the files ``record`` names (None when every image decodes and the latent loads)."""
    folder = Path(folder)
    for key in ("initial", "best"):
        path = folder / record["files"][key]
        try:
            with Image.open(path) as image:
                image.load()  # decodes every row: a truncated PNG fails here
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            return f"{record['files'][key]} does not decode ({_first_line(error)})"
    if "latent" in record["files"]:
        from safetensors import SafetensorError, safe_open

        name = record["files"]["latent"]
        try:
            with safe_open(str(folder / name), framework="pt") as handle:
                handle.get_tensor("latent")
        except (OSError, ValueError, SafetensorError, KeyError) as error:
            return f"{name} does not load ({_first_line(error)})"
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


# ----------------------------------------------------------------------------------------------- same settings

#: names used by earlier versions of the record -> today's
RENAMED_COMPUTE = {"unet_evals": "model_evals", "scorer_forward": "verifier_forward",
                   "scorer_backward": "verifier_backward"}


def upgrade_record(record: dict) -> dict:
    """A finished run's record in today's names: results written before the verifier section and the compute counts
    were renamed (``scorer`` -> ``verifier``, ``unet_evals`` -> ``model_evals``) read like new ones."""
    record = dict(record)
    config = record.get("config")
    if isinstance(config, dict) and "scorer" in config and "verifier" not in config:
        config = {("verifier" if key == "scorer" else key): value for key, value in config.items()}
        record["config"] = config
    compute = record.get("compute")
    if isinstance(compute, dict) and any(key in compute for key in RENAMED_COMPUTE):
        record["compute"] = {RENAMED_COMPUTE.get(key, key): value for key, value in compute.items()}
    return record


def setting_differences(config: dict, expected: dict[str, Any]) -> dict[str, tuple]:
    """Recorded settings that differ from ``expected``: dotted key -> (recorded, wanted).

    ``expected`` maps dotted keys of a run's configuration (``"search.max_epoch"``) to the value wanted, or to a tuple
    of accepted values.
    """
    differing = {}
    for key, want in expected.items():
        have = config
        for part in key.split("."):
            have = have.get(part) if isinstance(have, dict) else None
        accepted = want if isinstance(want, tuple) else (want,)
        if have not in accepted:
            differing[key] = (have, accepted[0])
    return differing


def expected_settings(search, generator, verifier) -> dict[str, Any]:
    """What a finished run must have been made with to be kept: the search (a ``SearchConfig``), the verifier and the
    options given to it, the model (by the name given or the path it resolves to), the negative prompt and scheduler,
    and the sampling settings and precision that are given (those left to the model's defaults, or ``auto``, are not
    compared). ``generator`` and ``verifier`` are the specs (:mod:`noise_diffusion.specs`). Records written before a
    setting was recorded pass for its default."""
    expected = {f"search.{k}": v for k, v in vars(search).items() if k != "keep_epoch_images"}
    expected["verifier.name"] = verifier.model
    for key, value in verifier.options().items():  # e.g. question_template, when given
        expected[f"verifier.{key}"] = value
    expected["generator.model"] = (generator.model, generator.model_path())
    for key in ("num_steps", "guidance_scale", "height", "width", "dtype"):
        value = getattr(generator, key)
        if value is not None and value != "auto":
            expected[f"generator.{key}"] = value
    negative, scheduler = generator.negative_prompt, generator.scheduler
    expected["generator.negative_prompt"] = (negative, None) if negative == "" else negative
    # flow-matching families have one scheduler, recorded by its name whichever choice selected it
    expected["generator.scheduler"] = (scheduler, None, "flow-match-euler") if scheduler == "ddim" else (
        scheduler, "flow-match-euler")
    return expected


def run_config(generator, verifier, search, seed: int | None = None, specs: tuple | None = None) -> dict:
    """The configuration recorded next to every result: the models' own settings, the search, and the specs the run
    was asked for (``(GeneratorSpec, VerifierSpec)``), as they are."""
    settings = getattr(verifier, "settings", None)
    config = {
        "generator": generator.settings(),
        "verifier": {"name": verifier.name, "device": str(verifier.device), **(dict(settings()) if callable(settings) else {})},
        "search": {k: v for k, v in vars(search).items() if k != "keep_epoch_images"},
        "device": str(generator.device),
        "command": " ".join(sys.argv),
    }
    if specs is not None:
        config["specs"] = {"generator": specs[0].record(), "verifier": specs[1].record()}
    if seed is not None:
        config["seed"] = seed
    return config


def held_out_problem(scores) -> str | None:
    """What makes ``scores`` no valid ``heldout_<verifier>.json`` (None when it is one)."""
    if not isinstance(scores, dict) or not isinstance(scores.get("verifier"), str):
        return "expected an object with 'verifier', 'initial_score' and 'best_score'"
    for key in ("initial_score", "best_score"):
        value = scores.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"{key!r} must be a finite number, got {value!r}"
    return None


def describe_differences(differing: dict[str, tuple]) -> str:
    return ", ".join(f"{k.split('.')[-1]} {old!r} there, {new!r} now" for k, (old, new) in differing.items())


# --------------------------------------------------------------------------------------------------- writing

def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    path = Path(path)
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
        _remove(tmp)
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


def _remove(path: str | os.PathLike) -> None:
    """Delete a file, or a directory that stands where a file belongs; nothing when there is none."""
    path = Path(path)
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except OSError:
        pass


def check_writable(root: str | os.PathLike) -> Path:
    """Create ``root`` if needed and make sure files can be written there; :class:`UserError` otherwise."""
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{secrets.token_hex(6)}{TEMP_SUFFIX}"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        os.unlink(probe)
    except OSError as error:
        raise UserError(f"result folder {str(root)!r} is not writable: {error.strerror or error}") from error
    return root


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


# ---------------------------------------------------------------------------------------------------- one run

def library_versions() -> dict[str, str]:
    import importlib.metadata as metadata

    versions = {"python": platform.python_version()}
    for package in ("torch", "diffusers", "transformers", "accelerate", "noise-diffusion"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def save_run(folder: str | os.PathLike, result, config: dict, save_latent: bool = True,
             epoch_files_written: bool = False) -> Path:
    """Write one :class:`~noise_diffusion.optimize.RunResult`: images and latent first, ``result.json`` last.

    The folder's previous ``result.json`` goes first, so a run killed while saving never leaves an old record beside
    new images; held-out scores (of the old images), epoch images this run did not make and temporary files of killed
    writers go too. ``epoch_files_written``: the caller already saved this run's epoch images (``run.py``).
    """
    from safetensors.torch import save as safetensors_bytes

    from .images import tensor_to_pil

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in (RESULT_FILE, "best.png", "initial.png", LATENT_FILE):
        _remove(folder / name)  # a directory there (a damaged run) would block the rename, too
    for prefix in (HELD_OUT_PREFIX, PNG_PREFIX):  # scores of the image being replaced
        for stale in folder.glob(f"{prefix}*.json"):
            _remove(stale)
    remove_temp_files(folder)
    epochs_dir = folder / "epochs"
    if epochs_dir.is_dir():
        remove_temp_files(epochs_dir)
        kept = {f"epoch_{r['epoch']:03d}.png" for r in result.epochs} if epoch_files_written else set()
        for image_file in epochs_dir.glob("epoch_*.png"):
            if image_file.name not in kept:
                _remove(image_file)
    save_image_atomic(folder / "best.png", tensor_to_pil(result.best_image)[0])
    save_image_atomic(folder / "initial.png", tensor_to_pil(result.initial_image)[0])
    for record, image in zip(result.epochs, result.epoch_images):
        save_image_atomic(epochs_dir / f"epoch_{record['epoch']:03d}.png", tensor_to_pil(image)[0])
    files = {"best": "best.png", "initial": "initial.png"}
    if save_latent:
        write_bytes_atomic(folder / LATENT_FILE, safetensors_bytes({"latent": result.best_latent.contiguous()}))
        files["latent"] = LATENT_FILE
    else:
        _remove(folder / LATENT_FILE)
    record = result.record()
    record.update({"files": files, "config": config, "versions": library_versions()})
    write_json_atomic(folder / RESULT_FILE, record)
    return folder
