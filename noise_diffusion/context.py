"""What a run's record holds besides what the loop measured: the specs it was made with (resolved), its category and
dataset, the built models' own settings, the command and the library versions."""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace

from .records import DatasetRef, RunRecord
from .settings import SAMPLING, resolved_verifier
from .specs import GeneratorSpec, VerifierSpec


@dataclass(frozen=True)
class RunContext:
    """The context of a run: the specs (recorded resolved), the built models' settings, how it was started, its
    category and dataset."""

    generator: GeneratorSpec
    verifier: VerifierSpec
    models: dict
    command: str = ""
    versions: dict | None = None
    category: str | None = None
    dataset: DatasetRef | None = None

    def apply(self, record: RunRecord) -> RunRecord:
        """``record`` with this context."""
        return replace(record, generator=self.generator, verifier=self.verifier, models=self.models,
                       command=self.command, versions=self.versions or {}, category=self.category,
                       dataset=self.dataset)


def run_context(model, verifier, specs: tuple | None = None, dataset: DatasetRef | None = None) -> RunContext:
    """The context of runs made by the built ``model`` and ``verifier``; ``specs`` (``(GeneratorSpec,
    VerifierSpec)``) are what they were built from, when known."""
    given = specs or (None, None)
    return RunContext(recorded_generator(model, given[0]), recorded_verifier(verifier, given[1]),
                      model_settings(model, verifier), " ".join(sys.argv), library_versions(), dataset=dataset)


def library_versions() -> dict[str, str]:
    import importlib.metadata as metadata
    import platform

    versions = {"python": platform.python_version()}
    for package in ("torch", "diffusers", "transformers", "accelerate", "noise-diffusion"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def recorded_generator(model, given: GeneratorSpec | None = None) -> GeneratorSpec:
    """The spec to record for a run made by the built ``model``: the one given (or one naming the model), with the
    sampling settings and precision the model used."""
    settings = model.settings()
    spec = given or GeneratorSpec(model=model.name, scheduler=getattr(model, "scheduler_name", "ddim"),
                                  negative_prompt=getattr(model, "negative_prompt", None) or "")
    used = {key: settings[key] for key in (*SAMPLING, "dtype") if key != "scheduler" and settings.get(key) is not None}
    return replace(spec, device=str(model.device), scheduler=getattr(model, "scheduler_name", spec.scheduler), **used)


def recorded_verifier(verifier, given: VerifierSpec | None = None) -> VerifierSpec:
    """The spec to record for a run scored by the built ``verifier``: the one given (or one naming it), on the device
    it ran on, with a concrete precision."""
    spec = replace(given or VerifierSpec(model=verifier.name), device=str(verifier.device))
    return resolved_verifier(spec)


def model_settings(model, verifier) -> dict:
    """The built models' own settings as they report them (recorded for reading, never compared)."""
    settings = getattr(verifier, "settings", None)
    return {"generator": model.settings(),
            "verifier": {"name": verifier.name, "device": str(verifier.device),
                         **(dict(settings()) if callable(settings) else {})}}
