"""The attention world's main-table script: its pre-registered prompt sample, the neglect rule, and the rendering of
cached shards into the table and the replication report's summary (on hand-made shards with known differences)."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import main_table_toy as table  # noqa: E402
from noise_diffusion.toy import world, world_attn  # noqa: E402


def test_the_prompt_sample_is_the_plans():
    entries = table.table_prompts()
    assert entries == table.table_prompts()  # drawn from a fixed seed
    prompts = [e["prompt"] for e in entries]
    assert len(set(prompts)) == 80
    spatial = [e for e in entries if e["family"] == "spatial"]
    existence = [e for e in entries if e["family"] == "existence"]
    assert len(spatial) == len(existence) == 40
    for relation in world.RELATIONS[:4]:
        of_relation = [e for e in spatial if world.parse_prompt(e["prompt"]).relation == relation]
        assert len(of_relation) == 10 and sum(e["held_out"] for e in of_relation) == 5
    assert all(" and " in e["prompt"] for e in existence)
    held = {e["prompt"] for e in existence if e["held_out"]}
    every_held = {world.make_prompt(a, "and", b) for a in range(10) for b in range(10)
                  if a != b and world_attn.is_held_out_prompt(world.make_prompt(a, "and", b))}
    assert held == every_held and len(held) == 20  # all the held-out existence prompts, the rest seen
    assert all(e["held_out"] == world_attn.is_held_out_prompt(e["prompt"]) for e in entries)


def test_a_digit_is_found_when_some_box_most_likely_shows_it():
    boxes = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]])  # box 0 reads 1, box 1 reads 0
    assert table.found_digits(boxes, 1, 0) == 2
    assert table.found_digits(boxes, 1, 2) == 1  # 2 is nowhere the most likely class
    assert table.found_digits(boxes, 2, 3) == 0


def fake_shard(key: str, prompts: list[str], scores: list[float], neglected: set[str]) -> dict:
    found = [1 if p in neglected else 2 for p in prompts]
    record = {"key": key, "cpu_seconds": 2.0 * len(prompts), "wall_seconds": 1.0, "prompts": prompts,
              "seeds": [0] * len(prompts), "guide": scores, "initial_guide": scores,
              "compute": [{"generations": 1, "model_evals": 30, "model_backwards": 0}] * len(prompts)}
    for judge in table.JUDGES:
        record |= {f"{judge}:score": scores, f"{judge}:faithful": [s > 0.5 for s in scores], f"{judge}:found": found}
    return record


def test_rendering_cached_shards_gives_the_table_and_the_summary(tmp_path):
    entries = table.table_prompts()
    prompts = [e["prompt"] for e in entries]
    existence = [e["prompt"] for e in entries if e["family"] == "existence"]
    raw = tmp_path / "raw"
    raw.mkdir()
    for key in table.METHODS:
        # every search scores the plain sampler's 0.2 plus 0.5; the plain sampler neglects in 10 of 40 prompts
        better = key.startswith(("noise_diffusion", "best_of_n"))
        neglected = set(existence[:10]) if key == "plain" else set()
        scores = [0.7 if better else 0.2] * len(prompts)
        (raw / f"{key}-0.json").write_text(json.dumps(fake_shard(key, prompts, scores, neglected)))
    out, summary = tmp_path / "attn.md", tmp_path / "rep.md"
    out.write_text("# plan\n\nfixed beforehand\n")
    summary.write_text("# the replication\n\nearlier sections\n")
    args = ["--render_only", "--seeds", "0", "--raw", str(raw), "--out", str(out), "--summary", str(summary)]
    table.main(args)
    saved = json.loads(out.with_suffix(".json").read_text())
    existence_numbers = saved["families"]["existence"]
    assert existence_numbers["methods"]["plain"]["neglect"] == pytest.approx(10 / 40)
    versus = existence_numbers["pairs"]["noise_diffusion_10 - plain"]
    assert (versus["mean"], versus["low"], versus["high"]) == pytest.approx((0.5, 0.5, 0.5))
    assert versus["positive"] == 40 and versus["sign_p"] == pytest.approx(2 * 0.5**40)
    assert versus["verdict"] == "supported: a > b"
    assert existence_numbers["pairs"]["noise_diffusion_10 - best_of_n_10"]["verdict"] == "not significant"
    text = out.read_text()
    assert text.startswith("# plan\n\nfixed beforehand\n") and "Interim" not in text
    first = summary.read_text()
    assert first.startswith("# the replication\n\nearlier sections\n\n" + table.SUMMARY_BEGIN)
    assert "| plain sampler | 0.200 [0.200, 0.200] | – | 25.0 % |" in first
    table.main(args)  # a second render replaces the summary instead of adding one
    assert summary.read_text() == first and first.count(table.SUMMARY_BEGIN) == 1
