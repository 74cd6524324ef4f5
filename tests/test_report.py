"""The report: numbers recomputed by hand from result folders written here, figures and markdown present."""

import json
import math
import statistics

import pytest
from PIL import Image

from noise_diffusion import report
from noise_diffusion.errors import UserError
from noise_diffusion.paper_datasets import PAPER_FILES
from noise_diffusion.records import OutdatedRecordError, RunRecord
from noise_diffusion.results import run_folder, write_json_atomic

#: the SHA-256 a hand-made run records for its dataset: the authors' simple set's, or another file's
DATASET_SHA = {"simple": PAPER_FILES["paper-simple"].sha256, None: "0" * 64}


def write_run(root, method, category, prompt, seed, scores, compute, held_out=None, kind="simple"):
    """A finished run folder as save_run leaves it (the fields the report reads)."""
    folder = run_folder(root / method, prompt, seed)
    folder.mkdir(parents=True)
    for name in ("initial.png", "best.png"):
        Image.new("RGB", (8, 8), (seed * 40 % 255, 80, 120)).save(folder / name)
    best = max(range(len(scores)), key=lambda k: (scores[k], -k))
    record = {
        "format": 2, "prompt": prompt, "seed": seed, "initial_score": scores[0], "best_score": scores[best],
        "best_epoch": best, "epochs": [{"epoch": k, "score": s} for k, s in enumerate(scores)], "compute": compute,
        "seconds": 0.5 * seed, "files": {"best": "best.png", "initial": "initial.png"},
        "config": {"search": {"method": method}, "verifier": {"model": "guide"},
                   "evaluation": {"category": category, "name": "simple", "sha256": DATASET_SHA[kind]}},
    }
    write_json_atomic(folder / "result.json", record)
    if held_out is not None:
        write_json_atomic(folder / "heldout_judge.json", {"verifier": "judge", "initial_score": held_out[0],
                                                           "best_score": held_out[1]})
    return folder


@pytest.fixture
def results(tmp_path):
    nd = {"generations": 3, "model_evals": 12, "model_backwards": 0, "verifier_forward": 3, "verifier_backward": 2}
    write_run(tmp_path, "noise_diffusion", "animals", "a cat and a dog", 1, [0.2, 0.5, 0.3], nd, (0.1, 0.4))
    write_run(tmp_path, "noise_diffusion", "animals", "a cat and a dog", 2, [0.4, 0.1], nd, (0.3, 0.2))
    write_run(tmp_path, "noise_diffusion", "objects", "a red car and a bow", 1, [0.6, 0.95, 0.7], nd)
    write_run(tmp_path, "none", "animals", "a cat and a dog", 1, [0.2],
              {"generations": 1, "model_evals": 4, "model_backwards": 0, "verifier_forward": 1, "verifier_backward": 0},
              kind=None)
    # unfinished or broken runs do not count
    (run_folder(tmp_path / "none", "a bow", 1)).mkdir(parents=True)
    broken = run_folder(tmp_path / "none", "a car", 1)
    broken.mkdir(parents=True)
    (broken / "result.json").write_text("{not json")
    return tmp_path


def test_report_numbers_equal_independent_means(results):
    summary = report.write_report(results)
    on_disk = json.loads((results / "summary.json").read_text())
    # recompute from the result.json files with plain Python
    records = [json.loads(p.read_text()) for p in sorted((results / "noise_diffusion").glob("*/*/result.json"))]
    for name, subset in (("overall", records), ("animals", [r for r in records if r["prompt"] == "a cat and a dog"]),
                         ("objects", [r for r in records if r["prompt"] == "a red car and a bow"])):
        stats = on_disk["methods"]["noise_diffusion"]["categories"][name]
        init = [r["initial_score"] for r in subset]
        best = [max(e["score"] for e in r["epochs"]) for r in subset]
        assert stats["runs"] == len(subset)
        assert stats["mean_initial"] == pytest.approx(sum(init) / len(init))
        assert stats["mean_best"] == pytest.approx(sum(best) / len(best))
        assert stats["gain"] == pytest.approx(sum(best) / len(best) - sum(init) / len(init))
        assert stats["best_above_0.5"] == pytest.approx(sum(b > 0.5 for b in best) / len(best))
        assert stats["best_above_0.9"] == pytest.approx(sum(b > 0.9 for b in best) / len(best))
        assert stats["median_best_epoch"] == statistics.median(r["best_epoch"] for r in subset)
        assert stats["model_evals_per_run"] == 12
        assert stats["model_backwards_per_run"] == 0
        assert stats["seconds_per_run"] == pytest.approx(sum(r["seconds"] for r in subset) / len(subset))
    # hand-worked: overall best 0.5, 0.4, 0.95 -> mean 0.6166..., initial 0.2, 0.4, 0.6 -> 0.4; epochs 1, 0, 1
    overall = summary["methods"]["noise_diffusion"]["categories"]["overall"]
    assert overall["mean_best"] == pytest.approx(1.85 / 3) and overall["mean_initial"] == pytest.approx(0.4)
    assert overall["median_best_epoch"] == 1 and overall["prompts"] == 2
    # held-out: only the two runs that were re-scored
    judge = on_disk["methods"]["noise_diffusion"]["held_out"]["overall"]["judge"]
    assert judge["runs"] == 2 and judge["mean_initial"] == pytest.approx(0.2) and judge["mean_best"] == pytest.approx(0.3)
    # the unfinished and the broken run are not counted
    assert on_disk["methods"]["none"]["categories"]["overall"]["runs"] == 1


def test_best_so_far_curve_is_hand_worked(results):
    summary = report.summarize(report.collect(results))
    curve = summary["methods"]["noise_diffusion"]["curve"]
    # runs: [0.2, 0.5, 0.5], [0.4, 0.4 (kept), 0.4], [0.6, 0.95, 0.95]
    assert curve["epoch"] == [0, 1, 2]
    assert curve["mean_best_so_far"] == pytest.approx([(0.2 + 0.4 + 0.6) / 3, (0.5 + 0.4 + 0.95) / 3,
                                                       (0.5 + 0.4 + 0.95) / 3])
    assert curve["model_evals"] == pytest.approx([4, 8, 12])  # 12 evals / 3 generations per epoch
    assert summary["methods"]["none"]["curve"]["mean_best_so_far"] == pytest.approx([0.2])


def test_report_files_paper_numbers_and_markdown(results):
    summary = report.write_report(results)
    for name in ("summary.json", "summary.md", "curves.png", "grid_noise_diffusion_animals.png",
                 "grid_noise_diffusion_objects.png", "grid_none_animals.png"):
        assert (results / name).stat().st_size > 0, name
    with Image.open(results / "curves.png") as image:
        assert image.size[0] > 100
    text = (results / "summary.md").read_text()
    assert "0.979" in text and "unverified" in text  # paper beside ours for the simple set ...
    assert summary["methods"]["none"]["paper"] is None  # ... but not for a dataset of unknown kind
    assert summary["methods"]["noise_diffusion"]["paper"]["SD1.4"] == 0.700
    assert "held-out verifier judge" in text and "| **overall** | 3 | 2 | 0.400 | 0.617 |" in text
    assert not any(p.name.endswith(".tmp") for p in results.iterdir())


def test_report_of_nothing_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="no finished results"):
        report.write_report(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        report.write_report(tmp_path / "missing")
    assert math.isnan(report.score_stats([], [])["mean_best"])


def test_verifier_hacking_is_guide_minus_held_out_per_prompt(results):
    summary = report.write_report(results)
    hacking = summary["methods"]["noise_diffusion"]["verifier_hacking"]["judge"]
    # hand-worked: "a cat and a dog" seed 1: best 0.5 vs held-out 0.4; seed 2: best 0.4 vs 0.2 -> prompt mean 0.15;
    # one prompt, so the bootstrap over prompts has nothing to vary
    assert hacking["runs"] == 2 and hacking["prompts"] == 1
    assert (hacking["mean"], hacking["low"], hacking["high"]) == pytest.approx((0.15, 0.15, 0.15))
    assert summary["methods"]["none"]["verifier_hacking"] == {}
    text = (results / "summary.md").read_text()
    assert "guide − held-out" in text and "judge: +0.150 [+0.150, +0.150]" in text


def test_a_record_of_an_earlier_layout_is_a_one_line_error_naming_overwrite(results):
    folder = run_folder(results / "noise_diffusion", "a cat and a dog", 1)
    old = json.loads((folder / "result.json").read_text())
    del old["format"]  # as an earlier version wrote it
    old["compute"] = {"generations": 3, "unet_evals": 12}
    write_json_atomic(folder / "result.json", old)
    with pytest.raises(OutdatedRecordError, match="earlier version.*--overwrite"):
        RunRecord.load(folder)
    summary = report.write_report(results)
    reasons = [item["reason"] for item in summary["skipped"] if item["folder"] == str(folder)]
    assert len(reasons) == 1 and "--overwrite" in reasons[0] and "\n" not in reasons[0]


def _cells(line: str) -> int:
    """The cells of a markdown table row: split at every ``|`` that no backslash escapes."""
    import re

    return len(re.split(r"(?<!\\)\|", line))


def test_categories_whose_slugs_collide_get_a_grid_each_and_a_pipe_breaks_no_table(tmp_path):
    nd = {"generations": 2, "model_evals": 8, "model_backwards": 0, "verifier_forward": 2, "verifier_backward": 1}
    for k, category in enumerate(("left/right", "left right", "a|b")):
        write_run(tmp_path, "noise_diffusion", category, f"a cat number {k}", 1, [0.2, 0.4], nd, (0.1, 0.3))
        write_run(tmp_path, "none", category, f"a cat number {k}", 1, [0.2], nd, (0.1, 0.1))
    summary = report.write_report(tmp_path)
    grids = summary["figures"]["grids"]["noise_diffusion"]
    assert len(set(grids.values())) == 3  # one file per category, none overwritten by another
    assert all((tmp_path / name).stat().st_size > 0 for name in grids.values())
    lines = (tmp_path / "summary.md").read_text().splitlines()
    assert any("a\\|b" in line for line in lines)
    tables = 0
    for k, line in enumerate(lines):
        if line.startswith("|---"):  # every row under a table's separator has the separator's number of cells
            tables += 1
            row = k + 1
            while row < len(lines) and lines[row].startswith("|"):
                assert _cells(lines[row]) == _cells(line), lines[row]
                row += 1
    assert tables >= 5  # the overview, the paper's table, per method its categories and its held-out verifier


def test_the_report_warns_of_mixed_schedulers_precisions_and_datasets(tmp_path):
    nd = {"generations": 2, "model_evals": 8, "model_backwards": 0, "verifier_forward": 2, "verifier_backward": 1}
    made = {"a cat": ("ddim", "bfloat16", "simple"), "a dog": ("default", "float32", None)}
    for prompt, (scheduler, dtype, kind) in made.items():
        folder = write_run(tmp_path, "noise_diffusion", "animals", prompt, 1, [0.2, 0.4], nd, kind=kind)
        record = json.loads((folder / "result.json").read_text())
        record["config"]["generator"] = {"model": "some/model", "scheduler": scheduler, "num_steps": 2,
                                         "guidance_scale": 7.5, "height": 8, "width": 8, "dtype": "float32"}
        record["config"]["verifier"] = {"model": "guide", "dtype": dtype}
        write_json_atomic(folder / "result.json", record)
    summary = report.write_report(tmp_path)
    assert summary["mixed_settings"] == {
        "noise_diffusion": 'scheduler: "ddim" / "default", verifier_dtype: "bfloat16" / "float32"'}
    assert summary["mixed_datasets"] == [f"simple (SHA-256 {DATASET_SHA[k][:12]}…)" for k in (None, "simple")]
    text = (tmp_path / "summary.md").read_text()
    assert "different settings** (scheduler" in text and "runs of different datasets" in text
    # one of the two datasets is the authors' file: the pooled rows are not the paper's set, and the report says so
    assert summary["methods"]["noise_diffusion"]["paper"] is None
    assert "No paper numbers for noise_diffusion: their dataset is not byte for byte the authors'" in text
