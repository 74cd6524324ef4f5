"""The toy replication's bookkeeping (prompt samples, the kept image, budgets) and one tiny end-to-end run."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import replicate_toy  # noqa: E402

from noise_diffusion.errors import UserError  # noqa: E402
from noise_diffusion.toy import world  # noqa: E402


def test_prompt_samples_are_disjoint_and_balanced():
    samples = replicate_toy.choose_prompt_samples(40, samples=2)
    assert [len(s) for s in samples] == [40, 40]
    assert not set(samples[0]) & set(samples[1])
    for sample in samples:
        assert sum(world.is_held_out_prompt(p) for p in sample) == 20
        relations = [world.parse_prompt(p).relation for p in sample]
        assert all(relations.count(r) == 8 for r in world.RELATIONS)
    assert replicate_toy.choose_prompt_samples(40, samples=2) == samples  # deterministic
    with pytest.raises(UserError, match="not enough held-out prompts"):  # 90 held-out prompts in the world
        replicate_toy.choose_prompt_samples(100, samples=2)


def test_kept_image_is_the_first_best_guiding_score_so_far():
    run = {"guide": np.array([[0.2, 0.5, 0.5, 0.1], [0.9, 0.1, 0.95, 0.0]]),
           "judge": np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])}
    assert replicate_toy.at_generations(run, "judge", 1).tolist() == [1.0, 5.0]
    assert replicate_toy.at_generations(run, "judge", 2).tolist() == [2.0, 5.0]
    assert replicate_toy.at_generations(run, "judge", 4).tolist() == [2.0, 7.0]  # tie: the earlier image is kept
    assert replicate_toy.at_generations(run, "judge", 99).tolist() == [2.0, 7.0]


def test_affordable_generations():
    assert replicate_toy.affordable(1.1, 0.1, 20) == (11, False)  # no float truncation to 10
    assert replicate_toy.affordable(1.1, 0.12, 20) == (9, False)
    assert replicate_toy.affordable(1.1, 0.05, 20) == (20, True)
    assert replicate_toy.affordable(0.01, 0.1, 20) == (1, False)


def test_tiny_replication_writes_markdown_json_and_figures(tmp_path):
    out = tmp_path / "rep.md"
    out.write_text(f"an earlier report\n\n{replicate_toy.KEPT_MARKER}\n\n## Written by another benchmark\n\nkept\n")
    report = replicate_toy.main(["--prompts", "2", "--seeds", "0", "--later_seeds", "0", "1", "--nd_epochs", "1", "--baseline_epochs", "1",
                                 "--timing_items", "2", "--timing_epochs", "0", "--timing_rounds", "1",
                                 "--resamples", "50", "--calibration", "4", "--attention", "none", "--out", str(out)])
    text = out.read_text()
    assert "## Equal generations" in text and "## Equal seconds" in text and "## Verifier hacking" in text
    assert "an earlier report" not in text  # rewritten above the marker, kept below it
    assert text.endswith(f"{replicate_toy.KEPT_MARKER}\n\n## Written by another benchmark\n\nkept\n")
    assert (tmp_path / "figures" / "rep_curves.png").stat().st_size > 0 and (tmp_path / "figures" / "rep.png").exists()
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["rows"][0]["label"] == "plain sampler" and len(saved["rows"]) == 5
    # 5 rows -> 10 pairs, each with both samples and the pooled comparison
    assert len(saved["pairs"][replicate_toy.JUDGE]) == 10
    assert all(len(p["samples"]) == 2 for p in saved["pairs"][replicate_toy.JUDGE])
    plain = saved["rows"][0][replicate_toy.JUDGE]["score"][0]
    assert plain == pytest.approx(np.mean(report["rows"][0][replicate_toy.JUDGE]["per_sample"]))


def test_attention_baselines_on_the_first_sample_cached_in_the_raw_file(tmp_path):
    out, raw = tmp_path / "rep.md", tmp_path / "raw.npz"
    args = ["--prompts", "2", "--seeds", "0", "1", "--later_seeds", "0", "--nd_epochs", "1", "--baseline_epochs", "1",
            "--timing_items", "2", "--timing_epochs", "0", "--timing_rounds", "1", "--resamples", "50",
            "--calibration", "4", "--attention_seeds", "1", "--out", str(out), "--raw", str(raw)]
    report = replicate_toy.main(args)
    attention = report["attention"]
    assert "## Attention baselines" in out.read_text() and attention["items"] == 2 and attention["seeds"] == [1]
    by_label = {r["label"]: r for r in attention["rows"]}
    assert by_label["InitNO"]["generations"] == 1 and by_label["InitNO"]["model_backwards"] > 0
    assert by_label["plain sampler"]["model_backwards"] == 0
    # the searches' rows are restricted to the baselines' items: the first sample's prompts with seed 1 only
    saved = np.load(raw)
    items = saved["initno/items"]
    assert items.tolist() == [1, 3]  # item order: prompt-major, seeds 0 1 within each prompt of the first sample
    plain_on_items = saved[f"best_of_n/{replicate_toy.JUDGE}"][items, 0]
    assert by_label["plain sampler"][replicate_toy.JUDGE]["score"][0] == pytest.approx(plain_on_items.mean())
    initno = saved[f"initno/{replicate_toy.JUDGE}"][:, 0]
    assert by_label["InitNO"][replicate_toy.JUDGE]["score"][0] == pytest.approx(initno.mean())
    pair = next(p for p in attention["pairs"][replicate_toy.JUDGE] if (p["a"], p["b"]) == ("InitNO", "plain sampler"))
    assert pair["pooled"]["mean"] == pytest.approx((initno - plain_on_items).mean())
    # re-rendered from the raw file: the same numbers, nothing run again
    again = replicate_toy.main(args)
    assert again["raw_reused"] and again["attention"]["rows"] == attention["rows"]
    with pytest.raises(UserError, match="attention_seeds"):
        replicate_toy.main(args[:-6] + ["--attention_seeds", "7", "--out", str(out), "--raw", str(raw)])
