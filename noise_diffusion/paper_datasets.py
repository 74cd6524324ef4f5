"""Prompt files of other projects, pinned and checked: the authors' exact files (``--dataset paper-simple``,
``--dataset paper-complex``) and the mechanism every downloadable set uses (downloaded once, checked, cached).

The files are ``datasets/simple_cases.json`` and ``datasets/complex_cases.json`` of github.com/Bomingmiao/NoiseDiffusion
(MIT licence, © the Noise Diffusion authors) at a pinned commit; each is verified against its SHA-256 before use. They
are cached under ``$NOISE_DIFFUSION_CACHE``, else ``$XDG_CACHE_HOME/noise-diffusion``, else
``~/.cache/noise-diffusion`` (the XDG convention), in ``datasets/<commit>/`` (the first 12 hex digits of the pinned
commit of their repository), so that they work offline once fetched.
With ``HF_HUB_OFFLINE=1`` (or no network) and no cached copy, or with a file whose checksum differs, the error says
what to do.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .atomic import write_bytes_atomic

REPOSITORY = "Bomingmiao/NoiseDiffusion"
COMMIT = "4f957f2ada0b5254a6caaea62f2c3328f73aa30d"
TIMEOUT_S = 30
RAW_BASE = "https://raw.githubusercontent.com"  # GitHub's raw file server


@dataclass(frozen=True)
class RemoteFile:
    """One file of a public repository at a pinned commit, known by its SHA-256."""

    path: str  # inside the repository
    sha256: str
    repository: str = REPOSITORY
    commit: str = COMMIT
    cached_name: str = ""  # its name in the cache (default: its own)

    @property
    def name(self) -> str:
        return self.cached_name or self.path.rsplit("/", 1)[-1]

    @property
    def url(self) -> str:
        return f"{RAW_BASE}/{self.repository}/{self.commit}/{self.path}"

    @property
    def cached_path(self) -> Path:
        return cache_dir(self.commit) / self.name


PaperFile = RemoteFile  # the authors' files: their repository and commit are the defaults


PAPER_FILES = {
    "paper-simple": PaperFile("datasets/simple_cases.json",
                              "b376c4e4306b85181e5746c7fbb6b7deaaf4a4b60b2c47b8b7105f2d0664464d"),
    "paper-complex": PaperFile("datasets/complex_cases.json",
                               "caf2656dd914ec04a4d4471cc1226d4c881f7c0af85420aa8aa68de643d11c63"),
}


def cache_dir(commit: str = COMMIT) -> Path:
    """Where the files are kept: ``$NOISE_DIFFUSION_CACHE`` or the XDG cache folder, per pinned commit."""
    root = os.environ.get("NOISE_DIFFUSION_CACHE")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(xdg, "noise-diffusion")
    return Path(root) / "datasets" / commit[:12]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:  # noqa: S310 (a pinned URL of RAW_BASE)
        return response.read()


def paper_dataset(name: str) -> Path:
    """The local path of a paper dataset (``paper-simple`` or ``paper-complex``), fetching it when not cached."""
    if name not in PAPER_FILES:
        raise UserError(f"unknown paper dataset {name!r}; choose from {', '.join(PAPER_FILES)}")
    return fetch_checked(name, PAPER_FILES[name])


def fetch_checked(name: str, spec: RemoteFile) -> Path:
    """The cached copy of ``spec`` (dataset ``name``), downloaded once and checked against its SHA-256."""
    path = spec.cached_path
    if path.is_file():
        found = sha256(path.read_bytes())
        if found != spec.sha256:
            raise UserError(f"cached {path} has SHA-256 {found[:12]}..., expected {spec.sha256[:12]}...: delete it "
                            f"and run again to download it afresh")
        return path
    if offline():
        raise UserError(f"{name} is not cached at {path} and HF_HUB_OFFLINE is set: run once with network access, "
                        f"or save {spec.url} there")
    try:
        data = download(spec.url)
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", None) or error
        raise UserError(f"cannot download {name} from {spec.url} ({reason}); with no network, save that file as "
                        f"{path}") from error
    found = sha256(data)
    if found != spec.sha256:
        raise UserError(f"downloaded {spec.url} has SHA-256 {found[:12]}..., expected {spec.sha256[:12]}...; "
                        f"nothing was cached (check the network or proxy, or save the file as {path})")
    write_bytes_atomic(path, data)
    return path
