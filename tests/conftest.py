"""Shared fixtures: tiny models with random weights, built once per test session from configs (no network)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

from noise_diffusion.testing import build_tiny_clip, build_tiny_sd_pipeline

# One thread: with two threads and another busy process, tiny runs slow down 40-90x on a 2-core machine.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory):
    """A tiny SD1.x pipeline folder whose own scheduler is PNDM (as SD1.4's)."""
    return str(build_tiny_sd_pipeline(tmp_path_factory.mktemp("tiny_sd")))


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    return str(build_tiny_clip(tmp_path_factory.mktemp("tiny_clip")))

# the top-level CLIs (run.py, evaluate.py) are imported by tests
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
