"""The ablation table and the latent's distance from the prior: hand-made records whose numbers are worked out here
with plain Python, the statistics against their formulas and scipy, and a run whose epochs record them."""

import json
import math
import statistics

import pytest
import torch
from PIL import Image

from noise_diffusion import report
from noise_diffusion.prior_stats import KS, NORM_GAP, ks_statistic, norm_gap, prior_stats
from noise_diffusion.results import run_folder, write_json_atomic
from noise_diffusion.search_config import SearchConfig
from noise_diffusion.search_state import ItemProgress, SearchState

COMPUTE = {"generations": 1, "model_evals": 4, "model_backwards": 0, "verifier_forward": 1, "verifier_backward": 0}


def write_run(root, method, prompt, seed, scores, max_epoch, prior=None, held_out=None):
    """A finished run folder (the fields the report reads); ``prior``: (gap, ks) per epoch, or None (an older
    record without them)."""
    folder = run_folder(root / method, prompt, seed)
    folder.mkdir(parents=True)
    for name in ("initial.png", "best.png"):
        Image.new("RGB", (8, 8), (seed * 40 % 255, 80, 120)).save(folder / name)
    best = max(range(len(scores)), key=lambda k: (scores[k], -k))
    epochs = [{"epoch": k, "score": s} for k, s in enumerate(scores)]
    for epoch, stats in zip(epochs, prior or []):
        epoch.update({NORM_GAP: stats[0], KS: stats[1]})
    write_json_atomic(folder / "result.json", {
        "format": 2, "prompt": prompt, "seed": seed, "initial_score": scores[0], "best_score": scores[best],
        "best_epoch": best, "epochs": epochs, "compute": COMPUTE, "seconds": 1.0,
        "files": {"best": "best.png", "initial": "initial.png"},
        "config": {"search": {"method": method, "max_epoch": max_epoch}, "verifier": {"model": "guide"},
                   "evaluation": {"category": "c", "name": "toy", "sha256": "0" * 64}}})
    if held_out is not None:
        write_json_atomic(folder / "heldout_judge.json", {"verifier": "judge", "initial_score": held_out[0],
                                                           "best_score": held_out[1]})


# 12 epochs each (0..11); ND: run 1 reaches 0.9 at epoch 3, run 2 at epoch 7, run 3 never
ND_RUNS = {
    ("a 1 left of a 2", 0): [0.1, 0.5, 0.6, 0.92, 0.8, 0.95, 0.9, 0.9, 0.9, 0.9, 0.9, 0.97],
    ("a 1 left of a 2", 1): [0.3, 0.2, 0.4, 0.4, 0.5, 0.6, 0.7, 0.91, 0.5, 0.5, 0.5, 0.5],
    ("a 3 above a 4", 0): [0.2, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.85],
}


@pytest.fixture
def results(tmp_path):
    for k, ((prompt, seed), scores) in enumerate(ND_RUNS.items()):
        prior = [(0.01 * (k + 1) + 0.001 * e, 0.02 * (k + 1) + 0.002 * e) for e in range(len(scores))]
        write_run(tmp_path, "noise_diffusion", prompt, seed, scores, 11, prior, held_out=(0.1, 0.6 + 0.1 * k))
        # gradient ascent: an older record without the prior statistics, budget 4 epochs, never reaches 0.9
        write_run(tmp_path, "gradient_ascent", prompt, seed, [0.1, 0.4, 0.8, 0.85, 0.7], 4)
    write_run(tmp_path, "none", "a 1 left of a 2", 0, [0.95], 0)
    return tmp_path


def test_ablation_rows_equal_independent_means_and_medians(results):
    report.write_report(results)
    rows = {m: info["ablation"] for m, info in json.loads((results / "summary.json").read_text())["methods"].items()}
    nd = rows["noise_diffusion"]
    curves = [[max(s[: k + 1]) for k in range(len(s))] for s in ND_RUNS.values()]
    for k in (1, 5, 10):
        assert nd[f"mean_best_at_epoch_{k}"] == pytest.approx(statistics.mean(c[k] for c in curves))
    assert nd["mean_best_at_epoch_5"] == pytest.approx((0.95 + 0.6 + 0.3) / 3)  # worked by hand
    assert nd["mean_best_last"] == pytest.approx((0.97 + 0.91 + 0.85) / 3)
    # first epochs to 0.9: 3, 7, never -> the median of (3, 7, never) is 7; one run never gets there
    assert nd["reach_0.9_median_epoch"] == 7 and nd["reach_0.9_never"] == 1 and nd["runs"] == 3
    judge = nd["held_out"]["judge"]
    assert judge["runs"] == 3 and judge["mean_best"] == pytest.approx(0.7)
    assert judge["guide_minus_held_out"] == pytest.approx((0.97 + 0.91 + 0.85) / 3 - 0.7)
    # prior statistics at epoch 0 and at each run's best epoch (11, 7, 11)
    assert nd["prior_runs"] == 3
    assert nd["prior_norm_gap_initial"] == pytest.approx((0.01 + 0.02 + 0.03) / 3)
    assert nd["prior_norm_gap_best"] == pytest.approx((0.021 + 0.027 + 0.041) / 3)
    assert nd["prior_ks_best"] == pytest.approx((0.042 + 0.054 + 0.082) / 3)
    ga = rows["gradient_ascent"]  # budget 4: no epoch 5 or 10; never 0.9 in any run: the median is unreached
    assert ga["mean_best_at_epoch_1"] == pytest.approx(0.4) and ga["mean_best_at_epoch_5"] is None
    assert ga["mean_best_at_epoch_10"] is None and ga["mean_best_last"] == pytest.approx(0.85)
    assert ga["reach_0.9_median_epoch"] is None and ga["reach_0.9_never"] == 3
    assert ga["prior_runs"] == 0 and ga["prior_ks_best"] is None and ga["held_out"] == {}
    plain = rows["none"]  # no search: reaches 0.9 at epoch 0, no later epochs
    assert plain["reach_0.9_median_epoch"] == 0 and plain["reach_0.9_never"] == 0
    assert plain["mean_best_at_epoch_1"] is None and plain["mean_best_last"] == 0.95


def test_ablation_markdown_shows_every_method_and_dashes_for_missing_fields(results):
    report.write_report(results)
    text = (results / "summary.md").read_text()
    assert "## Ablation: convergence and image quality" in text
    section = text.split("## Ablation: convergence and image quality\n\n", 1)[1].split("\n\n", 1)[0]
    lines = section.splitlines()[2:]  # below the header and the rule
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines)}
    assert set(rows) == {"noise_diffusion", "gradient_ascent", "none"} and len(lines) == 3
    cells = rows["gradient_ascent"]
    assert cells[:8] == ["gradient_ascent", "3", "0.400", "–", "–", "0.850", "–", "3 of 3"]
    assert cells[8:] == ["–", "–", "–"]  # no held-out scores, no prior statistics in these older records
    nd = rows["noise_diffusion"]
    assert nd[6:9] == ["7.0", "1 of 3", "judge: 0.700 (+0.210)"]
    assert nd[9] == "0.0200 → 0.0297"


def test_prior_statistics_against_hand_worked_values():
    # ‖z‖²/D: (9 + 1) / 2 = 5 -> gap 4; (4 + 0 + 0 + 0) / 4 = 1 -> gap 0; 0 -> gap 1
    z = torch.tensor([[3.0, 1.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert norm_gap(z[:, :2]).tolist()[0] == pytest.approx(4)
    assert norm_gap(z[1:]).tolist() == pytest.approx([0, 1])
    # KS of {0, 0}: Φ(0) = 1/2 and the empirical CDF jumps from 0 to 1 there -> D = 1/2
    assert ks_statistic(torch.zeros(1, 2)).item() == pytest.approx(0.5)
    # one entry x: D = max(Φ(x), 1 − Φ(x)); x = 1.96: Φ = 0.9750 (the normal table)
    assert ks_statistic(torch.tensor([[1.96]])).item() == pytest.approx(0.9750, abs=1e-4)
    # {-1, 1}: Φ(-1) = 0.158655, Φ(1) = 0.841345 -> max(1/2 − 0.158655, 0.158655, 1 − 0.841345, 0.841345 − 1/2)
    assert ks_statistic(torch.tensor([[1.0, -1.0]])).item() == pytest.approx(0.841345 - 0.5, abs=1e-6)
    stats = prior_stats(torch.tensor([[float("nan"), 1.0]]))[0]
    assert stats == {NORM_GAP: None, KS: None}  # strict JSON holds no NaN


def test_prior_statistics_against_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    generator = torch.Generator().manual_seed(0)
    z = torch.cat([torch.randn(3, 4, 8, 8, generator=generator),
                   1.5 * torch.randn(1, 4, 8, 8, generator=generator) + 0.3])  # the last one is off the prior
    for row, got in zip(z, prior_stats(z)):
        entries = row.double().flatten().numpy()
        assert got[KS] == pytest.approx(scipy_stats.kstest(entries, "norm").statistic, rel=1e-9)
        assert got[NORM_GAP] == pytest.approx(abs((entries ** 2).sum() / entries.size - 1), rel=1e-9)
    assert prior_stats(z)[3][KS] > max(s[KS] for s in prior_stats(z)[:3])


def _kolmogorov_smirnov(values):
    """D_n = sup |F_n − Φ| in plain Python: at each sorted point, the empirical CDF just before and just after it."""
    ordered, n = sorted(values), len(values)
    cdf = [0.5 * (1 + math.erf(x / math.sqrt(2))) for x in ordered]
    return max(max((i + 1) / n - c, c - i / n) for i, c in enumerate(cdf))


def test_every_recorded_epoch_holds_the_prior_statistics_of_its_latent():
    state = SearchState([ItemProgress("a", 0), ItemProgress("b", 1)], SearchConfig(max_epoch=1), active=[0, 1])
    latents = [torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    latents[1][1] *= 3  # item b's update moves it off the prior
    for epoch, z in enumerate(latents):
        state.record_epoch(epoch, z, torch.tensor([0.1 * epoch, 0.2]), torch.zeros(2, 3, 2, 2), None,
                           [{"candidate": 7}, {}], torch.ones(2, dtype=torch.bool), 0.0)
    for i, item in enumerate(state.items):
        for epoch, z in zip(item.epochs, latents):
            entries = z[i].double().flatten()
            assert epoch.info[NORM_GAP] == pytest.approx(abs(entries.pow(2).mean().item() - 1), rel=1e-12)
            assert epoch.info[KS] == pytest.approx(_kolmogorov_smirnov(entries.tolist()), rel=1e-9)
            assert math.isfinite(epoch.info[KS])
    assert state.items[0].epochs[1].info["candidate"] == 7  # the method's own info is kept beside them
    assert state.items[1].epochs[1].info[NORM_GAP] > 5


def _ablation_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "ablation_toy.py"
    spec = importlib.util.spec_from_file_location("ablation_toy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_toy_ablation_sample_is_balanced_distinct_and_fixed_by_its_seed():
    from noise_diffusion.datasets import resolve

    script = _ablation_script()
    held = {e["prompt"]: e["held_out"] for e in json.loads(resolve("toy-complex").read_text())}
    sample = script.choose_prompts(10, 0)
    assert [len(sample["seen"]), len(sample["held_out"])] == [5, 5]
    assert all(not held[e["prompt"]] for e in sample["seen"]) and all(held[e["prompt"]] for e in sample["held_out"])
    prompts = [e["prompt"] for group in sample.values() for e in group]
    assert len(set(prompts)) == 10 and script.choose_prompts(10, 0) == sample != script.choose_prompts(10, 1)


def test_the_toy_ablation_pairs_each_method_with_noise_diffusion_by_prompt_and_seed(results):
    intervals = _ablation_script().paired_intervals(results, resamples=200)
    by = {(c["method"], c["measure"]): c for c in intervals}
    last = by["gradient_ascent", "guide best (last)"]
    # per prompt, seeds averaged: (0.85 − 0.97 + 0.85 − 0.91) / 2 = −0.09 and 0.85 − 0.85 = 0; mean −0.045
    assert last["mean"] == pytest.approx(-0.045) and last["prompts"] == 2 and last["items"] == 3
    assert last["negative"] == 1 and last["positive"] == 0
    at_1 = by["gradient_ascent", "guide best-so-far @1"]  # 0.4 against 0.5, 0.3 (first prompt) and 0.3
    assert at_1["mean"] == pytest.approx(((0.4 - 0.5 + 0.4 - 0.3) / 2 + (0.4 - 0.3)) / 2)
    # gradient ascent's records hold no held-out score, no prior statistics, no epoch 5: those are not compared
    assert {m for m, _ in by} == {"gradient_ascent", "none"}
    assert not any(m == "gradient_ascent" and ("held-out" in k or "@5" in k or "KS" in k) for m, k in by)
