"""The package works when installed: built-in datasets and the toy world resolve from site-packages, not the tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CHECK = """
import sys
from pathlib import Path
import noise_diffusion
from noise_diffusion.datasets import DATASET_DIR, load_dataset
from noise_diffusion.generators import resolve_model
assert Path(noise_diffusion.__file__).resolve().is_relative_to(Path(sys.argv[1]).resolve()), noise_diffusion.__file__
assert DATASET_DIR == Path(noise_diffusion.__file__).resolve().parent / "data", DATASET_DIR  # datasets/, installed
counts = {name: len(load_dataset(name)) for name in ("pairs", "relations", "toy-simple", "toy-complex")}
assert counts == {"pairs": 276, "relations": 100, "toy-simple": 45, "toy-complex": 360}, counts
assert (Path(resolve_model("toy-digits")) / "model_index.json").is_file()
print("ok")
"""


def test_the_package_list_names_every_package_folder():
    # pyproject.toml lists the packages (datasets/ installs as noise_diffusion.data, which a finder cannot see)
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "noise_diffusion").rglob("__init__.py")}
    assert listed == folders | {"noise_diffusion.data"}


def test_installed_package_finds_its_data_from_any_directory(tmp_path):
    # build from a copy: setuptools writes build/ and *.egg-info beside the sources
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "*.egg-info", "__pycache__", "results", ".pytest_cache"))
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-compile",
         "--disable-pip-version-check", "--target", str(target), str(source)],
        check=True, capture_output=True, cwd=tmp_path,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    done = subprocess.run([sys.executable, "-c", CHECK, str(target)], cwd=elsewhere, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")
    # the console commands, from the same installed copy
    for command in ("run", "evaluate"):
        helped = subprocess.run(
            [sys.executable, "-c", f"import sys; sys.argv[0] = 'noise-diffusion-{command}'; "
                                   f"from noise_diffusion.commands.{command} import console; console()", "--help"],
            cwd=elsewhere, env=env, capture_output=True, text=True)
        assert helped.returncode == 0 and f"usage: noise-diffusion-{command}" in helped.stdout, helped.stderr[-2000:]
    entry_points = (target / next(p.name for p in target.glob("noise_diffusion-*.dist-info")) / "entry_points.txt")
    assert "noise-diffusion-run = noise_diffusion.commands.run:console" in entry_points.read_text()
