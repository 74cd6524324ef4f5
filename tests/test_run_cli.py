"""run.py end to end on a tiny pipeline and a tiny CLIP, and its handling of bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import run as run_cli
from noise_diffusion import cli
from noise_diffusion.results import run_folder, safe_folder_name

REPO = Path(__file__).resolve().parents[1]
FAST = ["--num_denoising_steps", "3", "--num_candidate_noises", "4", "--device", "cpu", "--quiet"]


def call(argv, capsys):
    """Run the CLI in-process as a user would (errors through main_guard); returns (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main_guard(lambda: run_cli.main(argv))
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def test_run_end_to_end_and_rerun_keeps_result(tiny_sd_dir, tiny_clip_dir, tmp_path, capsys):
    root = tmp_path / "results"
    argv = ["--prompt", "a dog under a frog", "--seed", "3", "--sd_version", tiny_sd_dir, "--vqa_model", tiny_clip_dir,
            "--max_epoch", "2", "--result_root", str(root), "--save_all_epochs", *FAST]
    code, out, err = call(argv, capsys)
    assert code == 0, err
    folder = run_folder(root, "a dog under a frog", 3)
    assert folder.parent.parent == root
    for name in ("best.png", "initial.png", "result.json", "best_latent.safetensors"):
        assert (folder / name).is_file(), name
    assert sorted(p.name for p in (folder / "epochs").iterdir()) == ["epoch_000.png", "epoch_001.png", "epoch_002.png"]
    record = json.loads((folder / "result.json").read_text())
    for key in ("prompt", "seed", "initial_score", "best_score", "best_epoch", "epochs", "config", "versions"):
        assert key in record
    assert record["prompt"] == "a dog under a frog" and record["seed"] == 3
    assert [e["epoch"] for e in record["epochs"]] == [0, 1, 2]
    assert record["best_score"] == max(e["score"] for e in record["epochs"])
    assert record["initial_score"] == record["epochs"][0]["score"]
    assert record["config"]["generator"]["num_steps"] == 3
    assert "torch" in record["versions"]
    assert str(folder) in out and "->" in out

    # a re-run keeps the finished result untouched
    stamp = (folder / "result.json").stat().st_mtime_ns
    code, out, _ = call(argv, capsys)
    assert code == 0 and "already finished" in out
    assert (folder / "result.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--max_epoch", "-1"], "--max_epoch"),
        (["--num_candidate_noises", "0"], "--num_candidate_noises"),
        (["--target_score", "1.5"], "--target_score"),
        (["--prompt", "   "], "prompt is empty"),
        (["--sd_version", "/nonexistent/model"], "/nonexistent/model"),
        (["--vqa_model", "no-such-verifier"], "no-such-verifier"),
        (["--device", "cuda:7"], "cuda:7"),
        (["--t5_device", "cpu"], "t5_device"),
        (["--vqa_question", "Is it {prompt}?"], "question_template"),
    ],
)
def test_bad_input_gives_one_line_error(tiny_sd_dir, tiny_clip_dir, tmp_path, capsys, extra, message):
    argv = ["--prompt", "a cat", "--sd_version", tiny_sd_dir, "--vqa_model", tiny_clip_dir,
            "--result_root", str(tmp_path), "--max_epoch", "1", *FAST, *extra]
    code, out, err = call(argv, capsys)
    assert code != 0
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def test_unwritable_result_root(tiny_sd_dir, tiny_clip_dir, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    argv = ["--prompt", "a cat", "--sd_version", tiny_sd_dir, "--vqa_model", tiny_clip_dir,
            "--result_root", str(blocker / "sub"), "--max_epoch", "1", *FAST]
    code, _, err = call(argv, capsys)
    assert code != 0 and "not writable" in err and len(err.strip().splitlines()) == 1


def test_prompt_cannot_escape_result_root(tmp_path):
    for prompt in ("../../x", "/etc/passwd", "..", "a/b\\c", "x" * 500, "日本語の猫"):
        name = safe_folder_name(prompt)
        assert "/" not in name and "\\" not in name and ".." not in name and len(name) <= 90
        folder = run_folder(tmp_path, prompt, 0).resolve()
        assert folder.is_relative_to(tmp_path.resolve())
    assert safe_folder_name("a cat") != safe_folder_name("a  cat")


def test_help_documents_every_flag_with_default():
    parser_help = subprocess.run(
        [sys.executable, str(REPO / "run.py"), "--help"], capture_output=True, text=True, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120,
    )
    assert parser_help.returncode == 0
    text = parser_help.stdout
    for flag in ("--prompt", "--seed", "--sd_version", "--vqa_model", "--num_candidate_noises", "--num_denoising_steps",
                 "--max_epoch", "--device", "--result_root", "--guidance_scale", "--height", "--width", "--scheduler",
                 "--dtype", "--vqa_device", "--save_all_epochs", "--target_score", "--accept"):
        assert flag in text, flag
    assert "default: clip-flant5-xxl" in text and "default: 50" in text


def test_missing_model_folder_real_process_has_no_traceback(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "run.py"), "--prompt", "a cat", "--sd_version", str(tmp_path / "missing"),
         "--result_root", str(tmp_path / "r"), "--device", "cpu"],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert "missing" in done.stderr.strip().splitlines()[-1]
