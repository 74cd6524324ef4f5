"""evaluate.py and noise_diffusion.evaluation on the tiny pipeline and a tiny CLIP verifier: methods and their compute,
resume after a crash, sharding, held-out re-scoring, and the CLI end to end (in-process)."""

import hashlib
import json
import sys
from pathlib import Path

import pytest

from noise_diffusion import api, evaluation, results
from noise_diffusion.datasets import PromptEntry
from noise_diffusion.errors import UserError
from noise_diffusion.evaluation import Job, job_folder, make_jobs, run_jobs, shard
from noise_diffusion.methods import METHODS
from noise_diffusion.optimize import SearchConfig
from noise_diffusion.records import DatasetRef
from noise_diffusion.verifiers import load_verifier

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import evaluate as evaluate_cli  # noqa: E402

STEPS, EPOCHS = 2, 2
REAL_SAVE, REAL_WRITE = results.save_run, results.write_json_atomic


@pytest.fixture(scope="module")
def generator(tiny_sd_dir):
    return api.build_generator(tiny_sd_dir, "cpu", "float32", scheduler="ddim", num_steps=STEPS)


@pytest.fixture(scope="module")
def verifier(tiny_clip_dir):
    return load_verifier(tiny_clip_dir, mapping="affine")  # (1 + cos) / 2: no score is clamped to 0


def entries(n, category="animals"):
    animals = ["cat", "dog", "frog", "bear", "lion"]
    return [PromptEntry(f"a {animals[i]} and a {animals[i + 1]}", category) for i in range(n)]


def search(method="noise_diffusion"):
    return SearchConfig(method=method, max_epoch=EPOCHS, num_candidates=4)


def finished(root, method, jobs):
    return [j for j in jobs if results.is_finished(job_folder(root, method, j))]


def count_saves(monkeypatch, fail_after=None):
    """Record every job save_run is called for; with ``fail_after``, the result.json of the next save is never
    written (the process dies half-way through writing a run)."""
    saved = []
    real_save, real_write = REAL_SAVE, REAL_WRITE

    def write(path, data):
        if fail_after is not None and len(saved) > fail_after:
            raise RuntimeError("killed")
        real_write(path, data)

    def save(folder, result, config):
        saved.append((result.prompt, result.seed))
        return real_save(folder, result, config)

    monkeypatch.setattr(evaluation, "save_run", save)
    monkeypatch.setattr(results, "write_json_atomic", write)
    return saved


@pytest.mark.parametrize("method", [m for m in METHODS if not METHODS[m].baseline])  # baselines: test_baselines
def test_each_method_runs_and_records_its_compute(tmp_path, generator, verifier, method):
    jobs = make_jobs(entries(2), [5])
    assert run_jobs(jobs, generator, verifier, search(method), tmp_path, batch_size=2, progress=False,
                    dataset=DatasetRef("mine", "0" * 64)) == 2
    for job in jobs:
        record = json.loads((job_folder(tmp_path, method, job) / "result.json").read_text())
        # zero_order scores its 4 neighbours every epoch; the others one latent
        generations = {"none": 1, "zero_order": 1 + EPOCHS * 4}.get(method, EPOCHS + 1)
        grads = EPOCHS if METHODS[method].needs_grad else 0  # a gradient after every epoch but the last
        # reno differentiates through every denoiser call (its exact gradient): both CFG halves of every step
        backwards = grads * 2 * STEPS if method == "reno" else 0
        assert record["compute"] == {"generations": generations, "model_evals": generations * 2 * STEPS,  # CFG: 2/step
                                     "model_backwards": backwards, "verifier_forward": generations,
                                     "verifier_backward": grads}
        assert len(record["epochs"]) == (1 if method == "none" else EPOCHS + 1)  # one record per epoch
        assert record["best_score"] == max(e["score"] for e in record["epochs"])
        assert record["config"]["search"]["method"] == method
        assert record["config"]["evaluation"] == {"category": "animals", "name": "mine", "sha256": "0" * 64}
        assert tmp_path.joinpath(method).is_dir() and (job_folder(tmp_path, method, job) / "best.png").is_file()


def test_best_of_n_and_noise_diffusion_spend_the_same_generations(tmp_path, generator, verifier):
    jobs = make_jobs(entries(1), [7])
    computes = []
    for method in ("best_of_n", "noise_diffusion"):
        run_jobs(jobs, generator, verifier, search(method), tmp_path, progress=False)
        computes.append(json.loads((job_folder(tmp_path, method, jobs[0]) / "result.json").read_text())["compute"])
    assert computes[0]["generations"] == computes[1]["generations"] == EPOCHS + 1
    assert computes[0]["model_evals"] == computes[1]["model_evals"]


def test_resume_after_a_crash_repeats_and_loses_nothing(tmp_path, generator, verifier, monkeypatch):
    jobs = make_jobs(entries(3), [1, 2])  # 6 jobs
    config = search("random_diffusion")
    saved = count_saves(monkeypatch, fail_after=2)
    with pytest.raises(RuntimeError, match="killed"):
        run_jobs(jobs, generator, verifier, config, tmp_path, batch_size=2, progress=False)
    assert len(saved) == 3  # the third save died before its result.json
    done = finished(tmp_path, config.method, jobs)
    assert [(j.prompt, j.seed) for j in done] == saved[:2]
    assert (job_folder(tmp_path, config.method, jobs[2]) / "best.png").is_file()  # half-written, not finished
    before = {j: (job_folder(tmp_path, config.method, j) / "result.json").read_bytes() for j in done}

    saved = count_saves(monkeypatch)
    todo = evaluation.pending_jobs(jobs, tmp_path, config.method)
    assert todo == jobs[2:]
    run_jobs(todo, generator, verifier, config, tmp_path, batch_size=2, progress=False)
    assert sorted(saved) == sorted((j.prompt, j.seed) for j in jobs[2:])  # each remaining job once, no repeat
    assert finished(tmp_path, config.method, jobs) == jobs
    for job, content in before.items():  # finished results untouched
        assert (job_folder(tmp_path, config.method, job) / "result.json").read_bytes() == content
    assert evaluation.pending_jobs(jobs, tmp_path, config.method) == []
    assert len(evaluation.pending_jobs(jobs, tmp_path, config.method, overwrite=True)) == 6


def test_shards_cover_every_pair_exactly_once(tmp_path, generator, verifier, monkeypatch):
    for count in (1, 2, 3, 7):
        jobs = [Job(f"p{i}", "c", s) for i in range(5) for s in (0, 1)]
        parts = [shard(jobs, i, count) for i in range(count)]
        assert sorted(j for p in parts for j in p) == sorted(jobs)
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(UserError):
        shard(jobs, 2, 2)
    # two processes' shards, run for real, write every (prompt, seed) once
    jobs = make_jobs(entries(3), [1, 2])
    saved = count_saves(monkeypatch)
    for index in (0, 1):
        procs = evaluation.processes((index, 2))
        assert (procs.index, procs.count, procs.barrier) == (index, 2, None)
        run_jobs(shard(jobs, procs.index, procs.count), generator, verifier, search("none"), tmp_path, progress=False)
    assert sorted(saved) == sorted((j.prompt, j.seed) for j in jobs)
    assert finished(tmp_path, "none", jobs) == jobs


def test_single_process_without_accelerate_launch():
    procs = evaluation.processes()
    assert (procs.index, procs.count, procs.is_main) == (0, 1, True)
    procs.wait()


def test_held_out_rescoring_matches_the_guide_and_resumes(tmp_path, generator, verifier):
    jobs = make_jobs(entries(2), [3])
    run_jobs(jobs, generator, verifier, search(), tmp_path, batch_size=2, progress=False)
    folders = [job_folder(tmp_path, "noise_diffusion", j) for j in jobs] + [tmp_path / "unfinished"]
    assert evaluation.rescore_held_out(folders, verifier, "same-clip", batch_size=2, progress=False) == 2
    for folder in folders[:2]:
        record = json.loads((folder / "result.json").read_text())
        held = json.loads(evaluation.held_out_file(folder, "same-clip").read_text())
        # the same verifier on the saved 8-bit PNGs gives the guiding scores back (up to rounding)
        assert held["initial_score"] == pytest.approx(record["initial_score"], abs=5e-3)
        assert held["best_score"] == pytest.approx(record["best_score"], abs=5e-3)
    assert evaluation.rescore_held_out(folders, verifier, "same-clip", progress=False) == 0  # resumed: nothing to do
    # redoing a run invalidates its held-out scores
    run_jobs(jobs[:1], generator, verifier, search(), tmp_path, overwrite=True, progress=False)
    assert not evaluation.held_out_file(folders[0], "same-clip").exists()
    assert evaluation.held_out_file(folders[1], "same-clip").exists()


def test_cli_end_to_end_with_shards_resume_held_out_and_report(tmp_path, tiny_sd_dir, tiny_clip_dir, capsys):
    data = tmp_path / "simple_cases.json"  # the authors' format, two categories
    data.write_text(json.dumps({"animals": [{"prompt": "a cat and a dog", "indices": [2, 5]},
                                            {"prompt": "a frog and a lion", "indices": [2, 5]}],
                                "objects": [{"prompt": "a red car and a blue bowl", "indices": [3, 7]}]}))
    root = tmp_path / "out"
    argv = ["--dataset", str(data), "--seeds", "1", "2", "--sd_version", tiny_sd_dir, "--vqa_model", tiny_clip_dir,
            "--num_denoising_steps", "2", "--max_epoch", "1", "--num_candidate_noises", "4", "--result_root", str(root),
            "--eval_vqa_model", tiny_clip_dir, "--quiet", "--method", "best_of_n", "--batch_size", "2"]
    assert evaluate_cli.main(argv + ["--shard", "0/2"]) == 0
    assert "shard 0/2 done" in capsys.readouterr().out and not (root / "summary.json").exists()
    assert evaluate_cli.main(argv + ["--shard", "1/2"]) == 0  # the last shard builds the report
    assert "report:" in capsys.readouterr().out
    records = [json.loads(p.read_text()) for p in root.glob("best_of_n/*/*/result.json")]
    assert sorted((r["prompt"], r["seed"]) for r in records) == sorted(
        (p, s) for p in ("a cat and a dog", "a frog and a lion", "a red car and a blue bowl") for s in (1, 2))
    summary = json.loads((root / "summary.json").read_text())["methods"]["best_of_n"]
    overall = summary["categories"]["overall"]
    assert overall["mean_best"] == pytest.approx(sum(r["best_score"] for r in records) / 6)
    assert overall["mean_initial"] == pytest.approx(sum(r["initial_score"] for r in records) / 6)
    animals = [r for r in records if r["config"]["evaluation"]["category"] == "animals"]
    assert summary["categories"]["animals"]["mean_best"] == pytest.approx(
        sum(r["best_score"] for r in animals) / len(animals))
    # named like the authors' file, but not its bytes: no paper numbers beside it
    assert summary["dataset_kind"] is None and summary["paper"] is None
    assert all(r["config"]["evaluation"]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest() for r in records)
    assert summary["held_out"]["overall"][tiny_clip_dir]["runs"] == 6
    # a re-run finds everything finished: nothing is rewritten
    stamps = {p: p.stat().st_mtime_ns for p in root.glob("best_of_n/*/*/*.json")}
    assert evaluate_cli.main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in root.glob("best_of_n/*/*/*.json")} == stamps
    (root / "summary.md").unlink()
    assert evaluate_cli.main(["--report", str(root)]) == 0
    assert "| **overall** | 6 | 3 |" in (root / "summary.md").read_text()
    # resuming with other settings would keep results that do not match them: refused, unless --overwrite
    with pytest.raises(UserError, match=r"6 finished runs .* other settings \(max_epoch 1 there, 2 now\)"):
        evaluate_cli.main(argv + ["--max_epoch", "2"])
    with pytest.raises(UserError, match=r"other settings \(num_steps 2 there, 3 now\)"):
        evaluate_cli.main(argv + ["--num_denoising_steps", "3"])
    with pytest.raises(UserError, match="unknown category 'birds'.*known: animals, objects"):
        evaluate_cli.main(argv + ["--categories", "birds"])
