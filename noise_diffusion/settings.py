"""Which settings of a run matter, with the defaults resolved: the one list that decides whether two runs were made
alike (a resume refuses finished runs made otherwise; the report warns when one method's runs mix settings).

A run is made with three specs (:class:`RunSpecs`): the diffusion model's
:class:`~noise_diffusion.specs.GeneratorSpec`, the verifier's :class:`~noise_diffusion.specs.VerifierSpec` and the
:class:`~noise_diffusion.search_config.SearchConfig`.
What matters of them is what changes the images or the scores: the search, the model (by the name or the path it
resolves to), its sampler settings, negative prompt and precision, whether SD3 keeps its T5 encoder, and the verifier
with its question, answer, resize and precision. Where a device or memory option goes does not matter. A sampling
setting left ``None`` is the model family's default (:func:`noise_diffusion.generators.sampling_defaults`), a
precision ``auto`` the one the device gets; a record stores them resolved.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, replace
from typing import Any

from .errors import UserError
from .search_config import SearchConfig
from .specs import GeneratorSpec, VerifierSpec, resolve_device, resolve_dtype

#: GeneratorSpec fields that change the images
GENERATOR_SETTINGS = ("model", "scheduler", "num_steps", "guidance_scale", "negative_prompt", "height", "width",
                      "dtype", "drop_t5")
#: VerifierSpec fields that change the scores, and the names they are reported by
VERIFIER_SETTINGS = {"model": "verifier", "dtype": "verifier_dtype", "question": "question", "answer": "answer",
                     "resize": "resize"}
#: the sampling settings a family gives a default for
SAMPLING = ("num_steps", "guidance_scale", "height", "width", "scheduler")


@dataclass(frozen=True)
class RunSpecs:
    """What a run is made with; a part left ``None`` is not compared."""

    generator: GeneratorSpec | None = None
    verifier: VerifierSpec | None = None
    search: SearchConfig | None = None


def settings_that_matter(specs: RunSpecs) -> dict[str, Any]:
    """name -> value of every setting that matters, defaults resolved (a default this machine cannot read stays
    ``None``)."""
    values: dict[str, Any] = {}
    if specs.search is not None:
        values.update(specs.search.record())
    if specs.generator is not None:
        generator = resolved_generator(specs.generator)
        values.update({key: getattr(generator, key) for key in GENERATOR_SETTINGS})
    if specs.verifier is not None:
        device = specs.verifier.device or (specs.generator.device if specs.generator else None)
        verifier = resolved_verifier(specs.verifier, device)
        values.update({name: getattr(verifier, key) for key, name in VERIFIER_SETTINGS.items()})
    return values


def differences(recorded: RunSpecs, wanted: RunSpecs) -> dict[str, tuple]:
    """name -> (recorded, wanted) for every setting that matters and differs (both sides resolved; a sampling setting
    whose default only the model's weights know, such as a family's native size, is not compared)."""
    have, want = settings_that_matter(recorded), settings_that_matter(wanted)
    return {key: (have[key], want[key]) for key in want
            if key in have and have[key] != want[key] and not (key in SAMPLING and want[key] is None)}


def describe(differing: dict[str, tuple]) -> str:
    """``max_epoch 1 there, 2 now, ...``"""
    return ", ".join(f"{key} {old!r} there, {new!r} now" for key, (old, new) in differing.items())


def mixed(specs: list[RunSpecs]) -> str:
    """The settings that differ among ``specs``, with their values (``max_epoch: 1 / 2``); empty when none do."""
    seen: dict[str, set] = {}
    for one in specs:
        for key, value in settings_that_matter(one).items():
            seen.setdefault(key, set()).add(json.dumps(value))
    return ", ".join(f"{key}: {' / '.join(sorted(values))}" for key, values in seen.items() if len(values) > 1)


@functools.lru_cache(maxsize=64)  # a resume compares every finished run with the same spec
def resolved_generator(spec: GeneratorSpec) -> GeneratorSpec:
    """``spec`` with the model's path, the family's sampling defaults and a concrete precision."""
    from .generators import generator_class, resolve_model, sampling_defaults

    spec = replace(spec, model=resolve_model(spec.model))
    if all(getattr(spec, key) is not None for key in SAMPLING) and spec.dtype != "auto":
        return spec  # nothing to look up (a recorded spec): no model file is read
    try:
        cls = generator_class(spec.model)
        defaults = sampling_defaults(spec.model, cls)
        dtype = _dtype_name(spec.dtype, spec.device, cls.PREFERRED_DTYPE)
    except UserError:  # a model this machine cannot read (e.g. a report of runs made elsewhere)
        return spec
    filled = {key: defaults.get(key) for key in SAMPLING if getattr(spec, key) is None}
    return replace(spec, dtype=dtype, **filled)


def resolved_verifier(spec: VerifierSpec, device: str | None = None) -> VerifierSpec:
    """``spec`` with a concrete precision (``device``: where it runs when the spec does not say)."""
    if spec.dtype != "auto":
        return spec
    try:
        return replace(spec, dtype=_dtype_name("auto", spec.device or device, "bfloat16"))
    except UserError:
        return spec


def _dtype_name(name: str, device: str | None, gpu_default: str) -> str:
    return str(resolve_dtype(name, resolve_device(device), gpu_default)).removeprefix("torch.")
