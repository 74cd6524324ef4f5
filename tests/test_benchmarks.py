"""The performance benchmarks measure the library without changing it: their instrumentation leaves results and global
state untouched, the CPU-timesteps experiment gives identical runs, and ``epoch_cost.py`` runs end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from noise_diffusion import SearchConfig, optimize
from noise_diffusion.generators import load_generator
from noise_diffusion.methods import METHODS
from noise_diffusion.verifiers import load_verifier

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import epoch_cost  # noqa: E402

PROMPTS, SEEDS = ["a cat", "a dog on a bench"], [4, 9]
CONFIG = SearchConfig(max_epoch=3, num_candidates=8)


@pytest.fixture(scope="module")
def verifier(tiny_clip_dir):
    return load_verifier(tiny_clip_dir, mapping="affine")


def run(generator, verifier):
    return optimize(generator, verifier, PROMPTS, SEEDS, CONFIG, progress=False)


def same_runs(a, b) -> bool:
    return all(
        [r["score"] for r in x.epochs] == [r["score"] for r in y.epochs]
        and [r.get("candidate") for r in x.epochs] == [r.get("candidate") for r in y.epochs]
        and torch.equal(x.best_image, y.best_image)
        for x, y in zip(a, b)
    )


def test_instrumentation_changes_nothing(tiny_sd_dir, verifier):
    generator = load_generator(tiny_sd_dir, num_steps=3)
    grad, method, sample = torch.autograd.grad, METHODS["noise_diffusion"], generator.sample
    plain = run(generator, verifier)
    with epoch_cost.attributed(generator, verifier) as totals:
        instrumented = run(generator, verifier)
    assert same_runs(plain, instrumented)
    # every piece was seen, and all were restored
    assert set(totals) == set(epoch_cost.BREAKDOWN) and all(v > 0 for v in totals.values())
    assert torch.autograd.grad is grad and METHODS["noise_diffusion"] is method
    assert generator.sample == sample and "sample" not in vars(generator) and "forward" not in vars(verifier)


@pytest.mark.parametrize("scheduler", ["ddim", "default"])
def test_cpu_timesteps_give_identical_runs(tiny_sd_dir, verifier, scheduler):
    generator = load_generator(tiny_sd_dir, num_steps=3, scheduler=scheduler)
    plain = run(generator, verifier)
    epoch_cost.use_cpu_timesteps(generator)
    assert generator.fresh_scheduler().timesteps.device.type == "cpu"
    assert same_runs(plain, run(generator, verifier))


def test_epoch_cost_runs_end_to_end(tiny_sd_dir, tiny_clip_dir, tmp_path):
    out = tmp_path / "cost.json"
    command = [sys.executable, str(BENCHMARKS / "epoch_cost.py"), "--sd_version", tiny_sd_dir, "--vqa_model",
               tiny_clip_dir, "--num_steps", "2", "--batch_size", "1", "2", "--epochs", "3", "--repeats", "1",
               "--num_candidate_noises", "4", "--threads", "1", "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert [r["batch_size"] for r in report["results"]] == [1, 2]
    for row in report["results"]:
        breakdown = row["breakdown_seconds"]
        parts = sum(v for k, v in breakdown.items() if k != "epoch")
        assert parts == pytest.approx(breakdown["epoch"], rel=1e-6)  # two epochs kept: medians are means, which add up
        assert row["epoch_over_minimum_breakdown"] >= 1.0
        assert len(row["epoch_intervals"]) == 2 and len(row["minimum_samples"]) == 2
    assert "| batch | epoch (optimize) s |" in done.stdout


def test_verifier_cost_runs_end_to_end(tmp_path):
    """The verifier benchmark times every tiny VQA family batched and one at a time, and leaves the verifier as it was."""
    out = tmp_path / "verifier.json"
    command = [sys.executable, str(BENCHMARKS / "verifier_cost.py"), "--batch_size", "1", "3", "--repeats", "1",
               "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["results"]
    assert len(rows) == 2 * 6 and {r["batch_size"] for r in rows} == {1, 3}
    assert all(r["batched"] > 0 and r["one_at_a_time"] > 0 for r in rows)
    assert "| verifier | batch |" in done.stdout


def test_batch_invariance_runs_end_to_end():
    """The batch benchmark the docs quote: two toy items batched against each alone, the same decisions."""
    command = [sys.executable, str(BENCHMARKS / "batch_invariance.py"), "--prompts", "1", "--seeds", "1", "2",
               "--batch_size", "2", "--max_epoch", "1", "--num_candidate_noises", "2", "--num_denoising_steps", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["runs"] == 2 and summary["scores"] == 4 and summary["same_candidates_and_best_epochs"]


def documented_quick_start(doc: str, world: str) -> list[str]:
    """The arguments of the ``python run.py ... --sd_version <world>`` command in a document's code blocks."""
    import shlex

    text = (BENCHMARKS.parent / doc).read_text(encoding="utf-8").replace("\\\n", " ")
    line = next(row for row in text.splitlines() if "python run.py" in row and f"--sd_version {world} " in row)
    return shlex.split(line.split("python run.py", 1)[1])


@pytest.mark.parametrize("doc, world", [("README.md", "toy-digits"), ("docs/toy_world.md", "toy-digits-attn")])
def test_the_quick_start_timer_runs_the_documented_command(doc, world):
    import quick_start

    assert quick_start.quick_start_command(world, "results")[2:] == documented_quick_start(doc, world)
