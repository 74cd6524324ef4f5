"""A whole Noise Diffusion run guided by a (tiny) VQAScore verifier, through the API that run.py uses."""

import json

import pytest
import torch

from noise_diffusion import SearchConfig
from noise_diffusion.api import run
from noise_diffusion.specs import GeneratorSpec, VerifierSpec
from noise_diffusion.errors import UserError
from noise_diffusion.verifiers import load_verifier
from noise_diffusion.testing.vqa import build_tiny_clip_t5


@pytest.fixture(scope="module")
def clip_t5_dir(tmp_path_factory):
    return str(build_tiny_clip_t5(tmp_path_factory.mktemp("clip_t5_run")))


def test_noise_diffusion_run_with_clip_t5(tiny_sd_dir, clip_t5_dir, tmp_path):
    question = 'Is "{prompt}" in this picture?'
    result = run("a red apple", seed=3, generator=GeneratorSpec(tiny_sd_dir, device="cpu", num_steps=3),
                 verifier=VerifierSpec(clip_t5_dir, question=question), search=SearchConfig(max_epoch=3, num_candidates=4), result_root=str(tmp_path), progress=False)
    scores = [r["score"] for r in result.epochs]
    assert [r["epoch"] for r in result.epochs] == [0, 1, 2, 3]
    assert all(0 < s < 1 for s in scores) and len(set(scores)) > 1  # the latent moved, the verifier saw it
    assert result.best_score == max(scores)
    assert result.compute["verifier_backward"] >= 3  # noise diffusion's candidate choice uses the VQAScore gradient
    # an independently loaded verifier gives the best image the recorded score (same template)
    verifier = load_verifier(clip_t5_dir, question_template=question)
    assert float(verifier(result.best_image[None], ["a red apple"])) == pytest.approx(result.best_score, rel=1e-4)
    saved = json.loads(next(tmp_path.rglob("result.json")).read_text())
    assert saved["best_score"] == pytest.approx(result.best_score)


def test_bad_verifier_option_is_a_user_error(clip_t5_dir):
    with pytest.raises(UserError, match="takes no option mapping"):
        load_verifier(clip_t5_dir, mapping="clamp")


def test_images_on_another_device_and_dtype(clip_t5_dir):
    """The verifier moves images to its own device and dtype; gradients flow back to the caller's tensor."""
    verifier = load_verifier(clip_t5_dir)
    images = torch.rand(1, 3, 32, 32, dtype=torch.float64, requires_grad=True)
    score = verifier(images, ["a cat"])
    assert score.device == verifier.device and score.dtype == torch.float32
    score.sum().backward()
    assert images.grad.dtype == torch.float64 and images.grad.abs().sum() > 0


def test_bfloat16_verifier_agrees_with_float32(clip_t5_dir):
    """bf16 is the GPU default: the verifier casts pixels to the model's dtype and does the softmax in float32."""
    images = torch.rand(2, 3, 32, 32)
    full = load_verifier(clip_t5_dir)(images, ["a cat", "a dog"])
    half = load_verifier(clip_t5_dir, dtype=torch.bfloat16)(images, ["a cat", "a dog"])
    assert half.dtype == torch.float32
    assert torch.allclose(half, full, rtol=0.05)  # bf16 keeps ~3 significant digits per layer


def test_run_py_with_a_vqa_verifier_and_templates(tiny_sd_dir, tmp_path, capsys):
    """run.py --vqa_model FOLDER --vqa_question/--vqa_answer reach the verifier; a bad template is a one-line error."""
    import run as run_cli
    from noise_diffusion import cli
    from noise_diffusion.testing.vqa import build_tiny_smolvlm

    verifier = str(build_tiny_smolvlm(tmp_path / "smolvlm"))
    argv = ["--prompt", "a cat", "--seed", "2", "--sd_version", tiny_sd_dir, "--vqa_model", verifier,
            "--vqa_question", "Is there {prompt}?", "--vqa_answer", "Sure", "--max_epoch", "2",
            "--num_denoising_steps", "3", "--num_candidate_noises", "4", "--device", "cpu", "--quiet",
            "--result_root", str(tmp_path / "results")]
    with pytest.raises(SystemExit) as exit_info:
        cli.main_guard(lambda: run_cli.main(argv))
    assert exit_info.value.code == 0, capsys.readouterr().err
    record = json.loads(next((tmp_path / "results").rglob("result.json")).read_text())
    from PIL import Image

    best = next((tmp_path / "results").rglob("best.png"))
    rescored = load_verifier(verifier, question_template="Is there {prompt}?", answer_template="Sure")
    # the PNG is 8-bit: the re-score of the saved image is close to, not exactly, the recorded score
    assert float(rescored.score_pil([Image.open(best)], ["a cat"])) == pytest.approx(record["best_score"], rel=0.05)
    default = load_verifier(verifier)
    assert float(default.score_pil([Image.open(best)], ["a cat"])) != pytest.approx(record["best_score"], rel=1e-3)
    with pytest.raises(SystemExit) as exit_info:
        cli.main_guard(lambda: run_cli.main(argv[:-2] + ["--vqa_question", "Is there {thing}?",
                                                         "--result_root", str(tmp_path / "r2")]))
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code != 0 and "template" in err and len(err.splitlines()) == 1
