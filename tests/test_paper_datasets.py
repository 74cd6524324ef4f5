"""The authors' prompt files: checksum and cache logic on local files (no network)."""

import hashlib
import json

import pytest

from noise_diffusion import paper_datasets
from noise_diffusion.datasets import dataset_kind, load_dataset
from noise_diffusion.errors import UserError
from noise_diffusion.paper_datasets import PAPER_FILES, PaperFile, paper_dataset

SIMPLE = {"animals": [{"prompt": "a cat and a dog", "indices": [2, 5]}],
          "objects": [{"prompt": "a red car and a blue bow", "indices": [3, 7]}]}


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A stand-in for the authors' repository: 'downloads' return local bytes; checksums are those of the bytes."""
    payload = json.dumps(SIMPLE).encode()
    digest = hashlib.sha256(payload).hexdigest()
    monkeypatch.setenv("NOISE_DIFFUSION_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setitem(PAPER_FILES, "paper-simple", PaperFile("datasets/simple_cases.json", digest))
    fetched = []

    def fake_download(url):
        fetched.append(url)
        return payload

    monkeypatch.setattr(paper_datasets, "download", fake_download)
    return {"payload": payload, "fetched": fetched, "cache": tmp_path / "cache"}


def test_pinned_checksums_and_urls():
    assert PAPER_FILES["paper-simple"].sha256 == "b376c4e4306b85181e5746c7fbb6b7deaaf4a4b60b2c47b8b7105f2d0664464d"
    assert PAPER_FILES["paper-complex"].sha256 == "caf2656dd914ec04a4d4471cc1226d4c881f7c0af85420aa8aa68de643d11c63"
    assert PAPER_FILES["paper-complex"].url == ("https://raw.githubusercontent.com/Bomingmiao/NoiseDiffusion/"
                                               "4f957f2ada0b5254a6caaea62f2c3328f73aa30d/datasets/complex_cases.json")


def test_download_once_then_offline_from_the_cache(served, monkeypatch):
    path = paper_dataset("paper-simple")
    assert path.read_bytes() == served["payload"] and path.is_relative_to(served["cache"])
    assert len(served["fetched"]) == 1
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert paper_dataset("paper-simple") == path  # no second download
    assert len(served["fetched"]) == 1
    entries = load_dataset("paper-simple")
    assert [(e.prompt, e.category, e.indices) for e in entries] == [
        ("a cat and a dog", "animals", (2, 5)), ("a red car and a blue bow", "objects", (3, 7))]
    assert dataset_kind(path) == "simple"


def test_offline_and_not_cached_is_one_line_that_says_what_to_do(served, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="not cached .* run once with network access") as error:
        paper_dataset("paper-simple")
    assert "\n" not in str(error.value) and served["fetched"] == []


def test_a_wrong_download_is_not_cached(served, monkeypatch):
    monkeypatch.setattr(paper_datasets, "download", lambda url: b"tampered")
    with pytest.raises(UserError, match="expected .*nothing was cached"):
        paper_dataset("paper-simple")
    assert not (paper_datasets.cache_dir() / "simple_cases.json").exists()


def test_a_corrupt_cached_copy_is_reported(served):
    path = paper_dataset("paper-simple")
    path.write_bytes(b"[]")
    with pytest.raises(UserError, match="delete it and run again"):
        paper_dataset("paper-simple")


def test_network_failure_is_one_line(served, monkeypatch):
    import urllib.error

    def fail(url):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(paper_datasets, "download", fail)
    with pytest.raises(UserError, match="cannot download paper-simple .*no route to host"):
        paper_dataset("paper-simple")


def test_cache_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("NOISE_DIFFUSION_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert paper_datasets.cache_dir().is_relative_to(tmp_path / "noise-diffusion")
