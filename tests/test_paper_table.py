"""The paper's comparison in one command: several methods with the models loaded once, --seeds paper, every row
re-scored from its PNG by the guiding verifier, and the table in the paper's shape (numbers recomputed here)."""

import json
import math
import sys
from pathlib import Path

import pytest

from noise_diffusion import cli, report
from noise_diffusion.specs import GeneratorSpec
from noise_diffusion.errors import UserError
from noise_diffusion.paper_table import paper_rows
from noise_diffusion.results import run_folder, write_json_atomic

from test_report import write_run

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import evaluate as evaluate_cli  # noqa: E402


def test_paper_seeds():
    assert cli.seed_list(["paper"]) == [22, 15, 9951, 31, 9989]
    assert cli.seed_list(["3", "paper", "22"]) == [3, 22, 15, 9951, 31, 9989]
    with pytest.raises(UserError, match="integer or 'paper'"):
        cli.seed_list(["x"])


def test_table_rows_from_hand_made_results(tmp_path):
    sd = {"generations": 1, "model_evals": 100, "model_backwards": 0, "verifier_forward": 1, "verifier_backward": 0}
    write_run(tmp_path, "none", "animals", "a cat and a dog", 1, [0.2], sd)
    write_run(tmp_path, "none", "objects", "a red car and a bow", 1, [0.6], sd)
    nd = {"generations": 3, "model_evals": 300, "model_backwards": 0, "verifier_forward": 3, "verifier_backward": 2}
    write_run(tmp_path, "noise_diffusion", "animals", "a cat and a dog", 1, [0.2, 0.9, 0.5], nd)
    write_run(tmp_path, "noise_diffusion", "objects", "a red car and a bow", 1, [0.6, 0.7], nd)
    for method, prompt, best in (("none", "a cat and a dog", 0.25), ("noise_diffusion", "a cat and a dog", 0.85)):
        folder = run_folder(tmp_path / method, prompt, 1)
        write_json_atomic(folder / "png_guide.json", {"verifier": "guide", "initial_score": 0.0, "best_score": best})
    summary = report.write_report(tmp_path)
    rows = {r["label"]: r for r in paper_rows(summary)}
    assert list(rows) == ["SD", "Noise Diffusion"]
    sd, nd_row = rows["SD"], rows["Noise Diffusion"]
    assert sd["cells"]["animals"]["in_loop"] == pytest.approx(0.2)
    assert sd["cells"]["overall"]["in_loop"] == pytest.approx(0.4)
    assert nd_row["cells"]["overall"]["in_loop"] == pytest.approx((0.9 + 0.7) / 2)
    assert nd_row["cells"]["animals"]["png"] == pytest.approx(0.85) and nd_row["cells"]["animals"]["png_runs"] == 1
    assert math.isnan(nd_row["cells"]["objects"]["png"])  # not re-scored: shown as missing, never as a number
    assert sd["paper"] == 0.700 and nd_row["paper"] == 0.979  # the paper's simple-set numbers
    assert sd["model_evals"] == 100 and nd_row["model_evals"] == 300
    text = (tmp_path / "summary.md").read_text()
    assert "## The paper's table" in text
    assert "| SD | 0.200 / 0.250 | 0.600 / – | 0.400 / 0.250 | 0.700 | 100 | 0 | 0.50 |" in text


def test_several_methods_in_one_command(tmp_path, tiny_sd_dir, tiny_clip_dir, monkeypatch):
    from noise_diffusion.baselines import initno

    monkeypatch.setattr(initno, "ROUND_STEPS", 1)  # InitNO's loop, shortened: 5 rounds of 1 step + 1 final step
    monkeypatch.setattr(initno, "FINAL_STEPS", 1)
    loads = []
    real_build = GeneratorSpec.build
    monkeypatch.setattr(GeneratorSpec, "build", lambda self: loads.append(1) or real_build(self))
    data = tmp_path / "simple_cases.json"
    data.write_text(json.dumps({"animals": [{"prompt": "a cat and a dog", "indices": [2, 5]}]}))
    root = tmp_path / "out"
    methods = ["none", "initno", "attend_and_excite", "noise_diffusion"]
    argv = ["--dataset", str(data), "--seeds", "1", "--sd_version", tiny_sd_dir, "--vqa_model", tiny_clip_dir,
            "--num_denoising_steps", "2", "--max_epoch", "1", "--num_candidate_noises", "2", "--result_root",
            str(root), "--quiet", "--methods", *methods]
    assert evaluate_cli.main(argv) == 0
    assert loads == [1]  # one generator for all four methods
    for method in methods:
        folder = run_folder(root / method, "a cat and a dog", 1)
        record = json.loads((folder / "result.json").read_text())
        files = list(folder.glob("png_*.json"))
        assert len(files) == 1
        png = json.loads(files[0].read_text())
        assert png["verifier"] == tiny_clip_dir
        assert png["best_score"] == pytest.approx(record["best_score"], abs=5e-3)  # the PNG path: 8-bit rounding
        assert record["compute"]["model_evals"] > 0
        if method in ("initno", "attend_and_excite"):
            assert record["epochs"][0][method]["token_indices"] == [2, 5]  # from the dataset
            assert record["compute"]["model_backwards"] > 0
    text = (root / "summary.md").read_text()
    assert "## The paper's table" in text
    for label in ("| SD |", "| InitNO |", "| A&E |", "| Noise Diffusion |"):
        assert label in text
    # a second run has nothing to do: no model is loaded again
    assert evaluate_cli.main(argv) == 0 and loads == [1]
