"""The record of one finished run (``result.json``) as types: :class:`RunRecord` with its :class:`EpochRecord` per
scored latent, its :class:`Compute`, the :class:`DatasetRef` and the specs it was made with.

:meth:`RunRecord.to_json` writes the record; :meth:`RunRecord.from_json` and :meth:`RunRecord.load` read it back or
raise one :class:`RecordError` that says why not. A record written by an earlier format raises
:class:`OutdatedRecordError`: such a run is redone with ``--overwrite``, never migrated.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from .atomic import read_json
from .errors import UserError
from .search_config import SearchConfig
from .settings import RunSpecs, differences
from .specs import GeneratorSpec, VerifierSpec, spec_from_record

if TYPE_CHECKING:
    from torch import Tensor

RESULT_FILE = "result.json"
#: The layout of ``result.json`` that this version writes; records of other layouts are not read.
RECORD_FORMAT = 2
#: Seeds are those of torch.Generator.manual_seed: 0 .. 2**64 - 1.
MAX_SEED = 2**64 - 1


class RecordError(ValueError):
    """A ``result.json`` that is no record of a finished run; ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class OutdatedRecordError(RecordError):
    """A record in the layout of another (earlier or newer) version: redone with ``--overwrite``, never read."""


def check_seed(seed: int) -> int:
    """``seed`` as an int if torch's generators accept it, :class:`UserError` otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise UserError(f"seed must be an integer from 0 to 2**64-1, got {seed!r}")
    return seed


class _Readable(Mapping):
    """Read access by key, as in the JSON object the record is written as (``epoch["score"]``)."""

    def _items(self) -> dict:  # pragma: no cover - interface
        raise NotImplementedError

    def __getitem__(self, key: str) -> Any:
        return self._items()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items())

    def __len__(self) -> int:
        return len(self._items())


@dataclass(frozen=True)
class EpochRecord(_Readable):
    """One scored latent: its epoch (0 = the initial latent), score, whether the update was accepted, the seconds it
    took per item, and what the method reports about it (``info``: e.g. γ and the chosen candidate; the search also puts
    the scored latent's distance from N(0, I) there, :mod:`noise_diffusion.prior_stats`)."""

    epoch: int
    score: float
    accepted: bool = True
    seconds: float = 0.0
    info: Mapping = field(default_factory=dict)

    def _items(self) -> dict:
        return {"epoch": self.epoch, "score": self.score, **self.info, "accepted": self.accepted,
                "seconds": self.seconds}

    def to_json(self) -> dict:
        return self._items()

    @classmethod
    def from_json(cls, data: Any) -> "EpochRecord":
        if not isinstance(data, dict) or not _count(data.get("epoch")) or not _finite(data.get("score")):
            raise RecordError("every epoch must hold an integer 'epoch' and a finite 'score'")
        accepted, seconds = data.get("accepted", True), data.get("seconds", 0.0)
        if not isinstance(accepted, bool) or not _finite(seconds):
            raise RecordError(f"epoch {data['epoch']}: 'accepted' must be true or false and 'seconds' a number")
        info = {k: v for k, v in data.items() if k not in ("epoch", "score", "accepted", "seconds")}
        return cls(data["epoch"], data["score"], accepted, seconds, info)


@dataclass(frozen=True)
class Compute(_Readable):
    """What a run spent: full generations, model (UNet/transformer) forward and backward evaluations, verifier
    forward and backward passes."""

    generations: int = 0
    model_evals: int = 0
    model_backwards: int = 0
    verifier_forward: int = 0
    verifier_backward: int = 0

    def _items(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to_json(self) -> dict:
        return self._items()

    @classmethod
    def from_json(cls, data: Any) -> "Compute":
        names = [f.name for f in fields(cls)]
        if not isinstance(data, dict) or sorted(data) != sorted(names) or not all(map(_count, data.values())):
            raise RecordError(f"'compute' must count {', '.join(names)} (non-negative integers)")
        return cls(**data)


@dataclass(frozen=True)
class DatasetRef:
    """The prompt set a run came from: the name it was given by and the SHA-256 of its file's bytes."""

    name: str
    sha256: str | None = None

    @classmethod
    def of(cls, name: str) -> "DatasetRef":
        """The dataset ``name`` resolves to (:func:`noise_diffusion.datasets.resolve`), hashed."""
        import hashlib

        from .datasets import resolve

        return cls(name, hashlib.sha256(resolve(name).read_bytes()).hexdigest())


@dataclass(frozen=True)
class RunFiles:
    """The file names of a run's images and latent inside its folder (``latent`` None: not saved)."""

    best: str = "best.png"
    initial: str = "initial.png"
    latent: str | None = "best_latent.safetensors"

    def to_json(self) -> dict:
        names = {"best": self.best, "initial": self.initial}
        return names if self.latent is None else {**names, "latent": self.latent}

    @classmethod
    def from_json(cls, data: Any) -> "RunFiles":
        if not isinstance(data, dict) or not all(_plain_name(data.get(k)) for k in ("best", "initial")):
            raise RecordError("'files' must name the 'best' and 'initial' images")
        if data.get("latent") is not None and not _plain_name(data["latent"]):
            raise RecordError("'files' names an impossible latent file")
        return cls(data["best"], data["initial"], data.get("latent"))


@dataclass(frozen=True)
class RunImages:
    """The tensors of a run that has just been made (CPU; images ``[3, H, W]`` in [0, 1]): the initial and best image,
    the standard-normal latent that generates the best one, and every epoch's image when they were kept."""

    initial: Tensor
    best: Tensor
    best_latent: Tensor
    epochs: tuple = ()


@dataclass(frozen=True)
class RunRecord:
    """One run of one (prompt, seed): its scores, epochs and compute, and what it was made with.

    ``optimize()`` returns one per item with ``images`` set and the specs it cannot know (``generator``,
    ``verifier``) unset; the evaluation and the API add them, with the category and the dataset, before a
    :class:`~noise_diffusion.results.RunFolder` saves it. ``failure`` says why a run stopped unfinished (a non-finite
    score): such a run is never saved. ``models`` holds the built models' own settings as they reported them,
    ``command`` and ``versions`` how the run was started: for reading only, never compared.
    """

    prompt: str
    seed: int
    initial_score: float
    best_score: float
    best_epoch: int
    epochs: tuple[EpochRecord, ...]
    compute: Compute
    seconds: float = 0.0
    search: SearchConfig | None = None
    generator: GeneratorSpec | None = None
    verifier: VerifierSpec | None = None
    category: str | None = None
    dataset: DatasetRef | None = None
    files: RunFiles = field(default_factory=RunFiles)
    models: Mapping = field(default_factory=dict)
    command: str = ""
    versions: Mapping = field(default_factory=dict)
    failure: str | None = None
    images: RunImages | None = field(default=None, compare=False, repr=False)

    @property
    def method(self) -> str | None:
        return self.search.method if self.search is not None else None

    @property
    def specs(self) -> RunSpecs:
        return RunSpecs(self.generator, self.verifier, self.search)

    def differs_from(self, specs: RunSpecs) -> dict[str, tuple]:
        """The settings that matter (:mod:`noise_diffusion.settings`) in which this run differs from ``specs``:
        name -> (recorded, wanted), defaults resolved on both sides."""
        return differences(self.specs, specs)

    # the tensors of a run just made (None for a record read from disk)
    @property
    def best_image(self) -> Tensor | None:
        return self.images.best if self.images else None

    @property
    def initial_image(self) -> Tensor | None:
        return self.images.initial if self.images else None

    @property
    def best_latent(self) -> Tensor | None:
        return self.images.best_latent if self.images else None

    @property
    def epoch_images(self) -> list:
        return list(self.images.epochs) if self.images else []

    def to_json(self) -> dict:
        config: dict = {"search": self.search.record() if self.search else None,
                        "generator": self.generator.record() if self.generator else None,
                        "verifier": self.verifier.record() if self.verifier else None,
                        "models": dict(self.models), "command": self.command}
        if self.category is not None or self.dataset is not None:
            config["evaluation"] = {"category": self.category, "name": self.dataset and self.dataset.name,
                                    "sha256": self.dataset and self.dataset.sha256}
        return {"format": RECORD_FORMAT, "prompt": self.prompt, "seed": self.seed,
                "initial_score": self.initial_score, "best_score": self.best_score, "best_epoch": self.best_epoch,
                "epochs": [e.to_json() for e in self.epochs], "compute": self.compute.to_json(),
                "seconds": self.seconds, "files": self.files.to_json(), "config": config,
                "versions": dict(self.versions)}

    @classmethod
    def from_json(cls, data: Any) -> "RunRecord":
        """The record ``data`` holds; :class:`RecordError` naming the first problem."""
        _check_format(data)
        _check_head(data)
        epochs = tuple(EpochRecord.from_json(e) for e in _list(data.get("epochs"), "epochs"))
        _check_scores(data, epochs)
        config = _object(data.get("config"), "config")
        evaluation = _object(config.get("evaluation", {}), "config.evaluation")
        dataset = evaluation.get("name")
        return cls(
            data["prompt"], data["seed"], data["initial_score"], data["best_score"], data["best_epoch"], epochs,
            Compute.from_json(data.get("compute")), data["seconds"],
            search=_spec(SearchConfig, _object(config.get("search"), "config.search"), "search"),
            generator=_spec(GeneratorSpec, config.get("generator"), "generator"),
            verifier=_spec(VerifierSpec, _object(config.get("verifier"), "config.verifier"), "verifier"),
            category=_optional_text(evaluation.get("category"), "category"),
            dataset=None if dataset is None else DatasetRef(_text(dataset, "dataset name"),
                                                            _optional_text(evaluation.get("sha256"), "sha256")),
            files=RunFiles.from_json(data.get("files")),
            models=_object(config.get("models", {}), "config.models"),
            command=str(config.get("command", "")),
            versions=_object(data.get("versions", {}), "versions"),
        )

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "RunRecord":
        """The record in ``folder/result.json``; :class:`RecordError` when there is none or it is unreadable."""
        path = Path(folder) / RESULT_FILE
        try:
            data = read_json(path)
        except FileNotFoundError:
            raise RecordError(f"{path} does not exist") from None
        except (OSError, ValueError, RecursionError) as error:
            raise RecordError(f"{path} is unreadable ({first_line(error)})") from None
        try:
            return cls.from_json(data)
        except OutdatedRecordError as error:
            raise OutdatedRecordError(f"{path}: {error.reason}") from None
        except RecordError as error:
            raise RecordError(f"{path}: {error.reason}") from None


def first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


# ------------------------------------------------------------------------------------------------------- checks

def _check_format(data: Any) -> None:
    if not isinstance(data, dict):
        raise RecordError(f"expected a JSON object, got {type(data).__name__}")
    found = data.get("format")
    if found is None and "config" in data or _count(found) and found < RECORD_FORMAT:
        raise OutdatedRecordError("written by an earlier version of noise-diffusion, in a layout this one does not "
                                  "read; redo it with --overwrite")
    if _count(found) and found > RECORD_FORMAT:  # never taken for a damaged run and redone unasked
        raise OutdatedRecordError(f"written by a newer version of noise-diffusion (record format {found}); read it "
                                  f"with that version, or redo it with --overwrite")
    if found != RECORD_FORMAT:
        raise RecordError(f"'format' must be {RECORD_FORMAT}, got {found!r}")


def _check_head(data: dict) -> None:
    if not isinstance(data.get("prompt"), str) or not data["prompt"].strip():
        raise RecordError("'prompt' is missing or not text")
    if not _count(data.get("seed")) or data["seed"] > MAX_SEED:
        raise RecordError(f"'seed' must be an integer from 0 to 2**64-1, got {data.get('seed')!r}")
    for key in ("initial_score", "best_score", "seconds"):
        if not _finite(data.get(key)):
            raise RecordError(f"{key!r} must be a finite number, got {data.get(key)!r}")
    if not _count(data.get("best_epoch")):
        raise RecordError(f"'best_epoch' must be a non-negative integer, got {data.get('best_epoch')!r}")


def _check_scores(data: dict, epochs: tuple[EpochRecord, ...]) -> None:
    scores = {e.epoch: e.score for e in epochs}
    if epochs[0].epoch != 0 or epochs[0].score != data["initial_score"]:
        raise RecordError("epochs[0] is not the initial score")
    if scores.get(data["best_epoch"]) != data["best_score"] or max(scores.values()) != data["best_score"]:
        raise RecordError("'best_score' is not the best epoch's score")


def _spec(cls: type, data: Any, name: str):
    if data is None:
        return None
    try:
        return spec_from_record(cls, _object(data, f"config.{name}"))
    except TypeError as error:
        raise RecordError(f"config.{name} is incomplete ({error})") from None


def _object(value: Any, name: str) -> dict:
    if not isinstance(value, dict):
        raise RecordError(f"{name!r} must be an object")
    return value


def _list(value: Any, name: str) -> list:
    if not isinstance(value, list) or not value:
        raise RecordError(f"{name!r} must be a non-empty list")
    return value


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise RecordError(f"{name} must be text, got {value!r}")
    return value


def _optional_text(value: Any, name: str) -> str | None:
    return None if value is None else _text(value, name)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _plain_name(value: Any) -> bool:
    return (isinstance(value, str) and bool(value) and "/" not in value and "\\" not in value
            and value not in (".", ".."))
