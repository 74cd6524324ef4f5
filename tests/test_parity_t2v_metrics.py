"""Parity with the original VQAScore code (t2v-metrics 3.0): checkpoints built and saved by t2v_metrics' own classes,
scored by t2v_metrics (in its own environment, transformers 4.49) and by this package's ``load_verifier``.

The reference side is ``tests/parity/t2v_reference.py``, run with the reference environments' Python (``.venv-t2v``
and, for Qwen2.5-VL, ``.venv-t2v-qwen``, built by ``.ci/run`` from ``tests/parity/requirements-t2v*.txt``;
``NOISE_DIFFUSION_T2V_PYTHON`` / ``NOISE_DIFFUSION_T2V_QWEN_PYTHON`` name others). Without them these tests skip,
unless ``NOISE_DIFFUSION_PARITY_REQUIRED=1`` (set by CI), where they fail.

Tolerances (float32): token ids and scored answer tokens identical; scores of saved PNGs (t2v_metrics' PIL path against
``score_pil``, which resizes in torch) within 2 % relative; on [0, 1] tensors at 336 px (no resize) scores and image
gradients within 1e-4 relative, gradient cosine >= 0.9999.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from noise_diffusion.verifiers import load_verifier

REPO = Path(__file__).resolve().parents[1]
REFERENCE_SCRIPT = REPO / "tests" / "parity" / "t2v_reference.py"
FAMILIES = ("clip_t5", "llava", "sharegpt4v")
VARIANTS = ("bin", "bin_no_tower", "sharded", "sharded_no_tower")
PNG_RTOL = 0.02
TENSOR_RTOL = 1e-4
MIN_COSINE = 0.9999


def reference_python(variable: str = "NOISE_DIFFUSION_T2V_PYTHON", venv: str = ".venv-t2v") -> Path | None:
    path = Path(os.environ.get(variable, REPO / venv / "bin" / "python"))
    return path if path.is_file() else None


def run_reference(tmp_path_factory, variable: str, venv: str, families: str) -> Path:
    """Run the reference script in its environment; skip without one (fail when CI says it should be there)."""
    python = reference_python(variable, venv)
    if python is None:
        reason = (f"reference environment absent ({venv} with t2v-metrics 3.0): `bash .ci/run` builds it, or set "
                  f"{variable}")
        if os.environ.get("NOISE_DIFFUSION_PARITY_REQUIRED") == "1":
            pytest.fail(reason + "; NOISE_DIFFUSION_PARITY_REQUIRED=1 says it should be there")
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("t2v_reference")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": "", "TOKENIZERS_PARALLELISM": "false"}
    run = subprocess.run([str(python), str(REFERENCE_SCRIPT), str(out), families], env=env, capture_output=True,
                         text=True, timeout=1800, cwd=out)
    if run.returncode != 0 or not (out / f"COMPLETE-{families.replace(',', '-')}").is_file():
        pytest.fail(f"the reference script failed ({run.returncode}):\n{run.stderr[-4000:]}")
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    return run_reference(tmp_path_factory, "NOISE_DIFFUSION_T2V_PYTHON", ".venv-t2v", "clip_t5,llava")


@pytest.fixture(scope="module")
def qwen_reference(tmp_path_factory) -> Path:
    """Qwen2.5-VL needs its own environment: t2v_metrics' module imports qwen_vl_utils, which imports torchvision,
    whose builds on the package index load only against CUDA builds of torch (run on the CPU here)."""
    return run_reference(tmp_path_factory, "NOISE_DIFFUSION_T2V_QWEN_PYTHON", ".venv-t2v-qwen", "qwen")


_verifiers: dict = {}


def project_verifier(reference: Path, family: str, variant: str):
    """This package's verifier of one saved checkpoint, through the public ``load_verifier``."""
    key = (family, variant)
    if key not in _verifiers:
        if family == "clip_t5":
            tokenizer = str(reference / "clip_t5" / "tokenizer")  # published checkpoints pair with google/flan-t5-*
            _verifiers[key] = load_verifier(str(reference / family / variant), tokenizer=tokenizer)
        else:
            _verifiers[key] = load_verifier(str(reference / family / "checkpoints" / variant))
    return _verifiers[key]


def expected(reference: Path, family: str, variant: str) -> dict:
    return torch.load(reference / family / "reference.pt", weights_only=True)["variants"][variant]


def inputs(reference: Path) -> dict:
    import json

    return json.loads((reference / "inputs" / "inputs.json").read_text(encoding="utf-8"))


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """In float64 on the flattened tensors (gradients of small scores are small: no epsilon clamping)."""
    a, b = a.double().flatten(), b.double().flatten()
    return (a @ b / (a.norm() * b.norm())).item()


cases = pytest.mark.parametrize("family,variant", [(f, v) for f in FAMILIES for v in VARIANTS])


@pytest.mark.parametrize("variant", VARIANTS)
def test_clip_t5_token_ids(reference, variant):
    """Encoder ids either side of ``<image>`` (the original puts -200 there) and answer labels, from the verifier's own
    tokenisation of the question."""
    verifier = project_verifier(reference, "clip_t5", variant)
    ref = expected(reference, "clip_t5", variant)
    for prompt, ref_ids, ref_labels in zip(inputs(reference)["prompts"], ref["input_ids"], ref["labels"]):
        question = verifier.question_template.format(prompt, prompt=prompt)
        before, after = verifier.encoder_text(question)
        ids = verifier.token_ids(before).tolist() + [-200] + verifier.token_ids(after).tolist()
        assert ids == ref_ids
        assert verifier.token_ids(verifier.answer_template.format(prompt, prompt=prompt)).tolist() == ref_labels


@pytest.mark.parametrize("family", ["llava", "sharegpt4v"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_llava_token_ids(reference, family, variant):
    """The ids the model sees (the original's -200 expanded to the image tokens) and the answer tokens scored, caught
    on their way into the model; the LLaMA-style sentencepiece tokenizer shows the "▁" handling around <image>."""
    verifier = project_verifier(reference, family, variant)
    ref = expected(reference, family, variant)
    seen = []
    hook = verifier.model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs), with_kwargs=True)
    try:
        images = torch.load(reference / "inputs" / "tensors.pt", weights_only=True)
        with torch.no_grad():
            for i, prompt in enumerate(inputs(reference)["prompts"]):
                verifier(images[i : i + 1], [prompt])
    finally:
        hook.remove()
    image_id = verifier.model.config.image_token_id
    for kwargs, ref_ids, ref_labels in zip(seen, ref["input_ids"], ref["labels"]):
        n_image = int((kwargs["input_ids"] == image_id).sum())
        expanded = [t for i in ref_ids for t in ([image_id] * n_image if i == -200 else [i])]
        assert kwargs["input_ids"][0].tolist() == expanded
        scored = kwargs["input_ids"][0, -(kwargs["logits_to_keep"] - 1):].tolist()
        assert scored == ref_labels


@cases
def test_png_scores(reference, family, variant):
    """Saved PNGs that need square padding and resizing: t2v_metrics' PIL pipeline vs ``score_pil``."""
    verifier = project_verifier(reference, family, variant)
    ref = torch.tensor(expected(reference, family, variant)["png_scores"])
    data = inputs(reference)
    ours = torch.stack([verifier.score_pil([Image.open(png)] * len(data["prompts"]), data["prompts"]) for png in data["pngs"]])
    rel = ((ours - ref).abs() / ref).max().item()
    assert rel <= PNG_RTOL, (rel, ours, ref)


@cases
def test_tensor_scores_and_gradients(reference, family, variant):
    """[0, 1] tensors at 336 px: scores and d score / d image as the original computes them."""
    verifier = project_verifier(reference, family, variant)
    ref = expected(reference, family, variant)
    images = torch.load(reference / "inputs" / "tensors.pt", weights_only=True)
    for i, prompt in enumerate(inputs(reference)["prompts"]):
        image = images[i : i + 1].clone().requires_grad_(True)
        score = verifier(image, [prompt])[0]
        score.backward()
        ref_score, ref_grad = torch.tensor(ref["tensor_scores"][i]), ref["grads"][i]
        assert abs(score.item() - ref_score.item()) / ref_score.item() <= TENSOR_RTOL, (score.item(), ref_score.item())
        assert relative(image.grad[0], ref_grad) <= TENSOR_RTOL, relative(image.grad[0], ref_grad)
        assert ref_grad.abs().max() > 0
        assert cosine(image.grad[0], ref_grad) >= MIN_COSINE, cosine(image.grad[0], ref_grad)


@pytest.fixture(scope="module")
def qwen(qwen_reference):
    ref = torch.load(qwen_reference / "qwen2_5_vl" / "reference.pt", weights_only=True)["variants"]["safetensors"]
    template = ref["question_template"].replace("{}", "{prompt}")  # t2v_metrics' own default for Qwen
    verifier = load_verifier(str(qwen_reference / "qwen2_5_vl" / "qwen2.5-vl-tiny"), question_template=template,
                         answer_template=ref["answer_template"])
    return verifier, ref, inputs(qwen_reference)


def test_qwen_token_ids_grid_and_pixels(qwen):
    """With t2v_metrics' template: the ids its processor and chat template build (then the answer token), the
    same ``image_grid_thw``, and the same ``pixel_values`` (exactly where no resize is needed; within the resize
    tolerances of the preprocessing tests where its PIL resize and this package's torch resize differ)."""
    verifier, ref, data = qwen
    seen = []
    hook = verifier.model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs), with_kwargs=True)
    try:
        with torch.no_grad():
            for png in data["pngs"]:
                for prompt in data["prompts"]:
                    verifier.score_pil([Image.open(png)], [prompt])
    finally:
        hook.remove()
    assert len(seen) == len(ref["input_ids"])
    for i, kwargs in enumerate(seen):
        ids = kwargs["input_ids"][0].tolist()
        assert ids[:-1] == ref["input_ids"][i] and ids[-1] == ref["answer_id"]
        assert kwargs["image_grid_thw"][0].tolist() == ref["image_grid_thw"][i]
        diff = (kwargs["pixel_values"] - ref["pixel_values"][i]).abs()
        if "multiple_of_28" in data["pngs"][i // len(data["prompts"])]:
            assert diff.max() < 1e-5, diff.max()
        else:
            assert diff.max() < 0.25 and diff.mean() < 0.01, (diff.max(), diff.mean())


def test_qwen_png_scores(qwen):
    """t2v_metrics scores the first answer token's probability from ``generate``; this package exp(mean log p) of the
    answer tokens, here one."""
    verifier, ref, data = qwen
    ours = torch.stack([verifier.score_pil([Image.open(png)] * len(data["prompts"]), data["prompts"]) for png in data["pngs"]])
    expected = torch.tensor(ref["png_scores"])
    rel = ((ours - expected).abs() / expected).max().item()
    assert rel <= PNG_RTOL, (rel, ours, expected)


@pytest.mark.parametrize("variable,venv", [("NOISE_DIFFUSION_T2V_PYTHON", ".venv-t2v"),
                                           ("NOISE_DIFFUSION_T2V_QWEN_PYTHON", ".venv-t2v-qwen")])
def test_reference_environment_is_the_original(variable, venv):
    """The reference environments run t2v-metrics 3.0 under transformers 4.49 (not this package's versions)."""
    python = reference_python(variable, venv)
    if python is None:
        if os.environ.get("NOISE_DIFFUSION_PARITY_REQUIRED") == "1":
            pytest.fail(f"reference environment {venv} absent but NOISE_DIFFUSION_PARITY_REQUIRED=1")
        pytest.skip(f"reference environment absent ({venv}): `bash .ci/run` builds it")
    code = ("import importlib.metadata as m; print(m.version('t2v_metrics'), m.version('transformers'));"
            "import importlib.util as u; print(u.find_spec('noise_diffusion') is None)")
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True, cwd="/",
                         env={**os.environ, "PYTHONPATH": ""}).stdout.split()
    assert out == ["3.0", "4.49.0", "True"], out
    assert sys.executable != str(python)
