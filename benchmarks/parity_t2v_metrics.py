"""Measured differences between this package's verifiers and the original VQAScore code (t2v-metrics 3.0), per
family and checkpoint layout: the figures behind docs/verifiers.md ("What was verified, and against what").

    OMP_NUM_THREADS=1 python benchmarks/parity_t2v_metrics.py [--python .venv-t2v/bin/python] [--reference DIR]

Runs tests/parity/t2v_reference.py in the reference environment (unless --reference names a folder it already
wrote), scores the same checkpoints, images and prompts with ``load_verifier`` and prints one markdown row per
checkpoint: token ids equal, the largest relative score difference on saved PNGs, and on [0, 1] tensors at 336 px the
largest relative score and gradient differences and the smallest gradient cosine. tests/test_parity_t2v_metrics.py
asserts the tolerances; this script only reports.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from noise_diffusion.verifiers import load_verifier  # noqa: E402

FAMILIES = ("clip_t5", "llava", "sharegpt4v")
VARIANTS = ("bin", "bin_no_tower", "sharded", "sharded_no_tower")


def checkpoint_verifier(reference: Path, family: str, variant: str):
    if family == "clip_t5":
        return load_verifier(str(reference / family / variant), tokenizer=str(reference / "clip_t5" / "tokenizer"))
    return load_verifier(str(reference / family / "checkpoints" / variant))


def token_ids_equal(verifier, family: str, ref: dict, prompts: list[str], images: torch.Tensor) -> bool:
    if family == "clip_t5":
        for prompt, ref_ids, ref_labels in zip(prompts, ref["input_ids"], ref["labels"]):
            before, after = verifier.encoder_text(verifier.question_template.format(prompt, prompt=prompt))
            ids = verifier.token_ids(before).tolist() + [-200] + verifier.token_ids(after).tolist()
            labels = verifier.token_ids(verifier.answer_template.format(prompt, prompt=prompt)).tolist()
            if ids != ref_ids or labels != ref_labels:
                return False
        return True
    seen = []
    hook = verifier.model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw), with_kwargs=True)
    with torch.no_grad():
        for i, prompt in enumerate(prompts):
            verifier(images[i : i + 1], [prompt])
    hook.remove()
    image_id = verifier.model.config.image_token_id
    for kwargs, ref_ids, ref_labels in zip(seen, ref["input_ids"], ref["labels"]):
        n_image = int((kwargs["input_ids"] == image_id).sum())
        expanded = [t for i in ref_ids for t in ([image_id] * n_image if i == -200 else [i])]
        ids = kwargs["input_ids"][0].tolist()
        if ids != expanded or ids[-(kwargs["logits_to_keep"] - 1):] != ref_labels:
            return False
    return True


def measure(reference: Path, family: str, variant: str) -> dict:
    data = json.loads((reference / "inputs" / "inputs.json").read_text(encoding="utf-8"))
    ref = torch.load(reference / family / "reference.pt", weights_only=True)["variants"][variant]
    images = torch.load(reference / "inputs" / "tensors.pt", weights_only=True)
    verifier = checkpoint_verifier(reference, family, variant)
    png = torch.stack([verifier.score_pil([Image.open(p)] * len(data["prompts"]), data["prompts"]) for p in data["pngs"]])
    png_ref = torch.tensor(ref["png_scores"])
    score_rel, grad_rel, cosines = [], [], []
    for i, prompt in enumerate(data["prompts"]):
        image = images[i : i + 1].clone().requires_grad_(True)
        score = verifier(image, [prompt])[0]
        score.backward()
        g, g_ref = image.grad[0].double().flatten(), ref["grads"][i].double().flatten()
        score_rel.append(abs(score.item() - ref["tensor_scores"][i]) / ref["tensor_scores"][i])
        grad_rel.append(((g - g_ref).norm() / g_ref.norm()).item())
        cosines.append((g @ g_ref / (g.norm() * g_ref.norm())).item())
    return {"ids": token_ids_equal(verifier, family, ref, data["prompts"], images),
            "png": ((png - png_ref).abs() / png_ref).max().item(), "score": max(score_rel), "grad": max(grad_rel),
            "cosine": min(cosines), "score_range": (min(ref["tensor_scores"]), max(ref["tensor_scores"]))}


def measure_qwen(reference: Path) -> dict:
    """Qwen2.5-VL with t2v_metrics' template: ids, grid, pixel differences (no-resize PNG vs resized ones), scores."""
    data = json.loads((reference / "inputs" / "inputs.json").read_text(encoding="utf-8"))
    ref = torch.load(reference / "qwen2_5_vl" / "reference.pt", weights_only=True)["variants"]["safetensors"]
    verifier = load_verifier(str(reference / "qwen2_5_vl" / "qwen2.5-vl-tiny"),
                         question_template=ref["question_template"].replace("{}", "{prompt}"),
                         answer_template=ref["answer_template"])
    seen = []  # one model call per (image, prompt), as the reference records them
    hook = verifier.model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw), with_kwargs=True)
    with torch.no_grad():
        for path in data["pngs"]:
            for prompt in data["prompts"]:
                verifier.score_pil([Image.open(path)], [prompt])
    hook.remove()
    with torch.no_grad():
        png = torch.stack([verifier.score_pil([Image.open(p)] * len(data["prompts"]), data["prompts"]) for p in data["pngs"]])
    exact, resized, ids = [], [], True
    for i, kwargs in enumerate(seen):
        ids &= kwargs["input_ids"][0, :-1].tolist() == ref["input_ids"][i] and int(kwargs["input_ids"][0, -1]) == ref["answer_id"]
        ids &= kwargs["image_grid_thw"][0].tolist() == ref["image_grid_thw"][i]
        diff = (kwargs["pixel_values"] - ref["pixel_values"][i]).abs()
        (exact if "multiple_of_28" in data["pngs"][i // len(data["prompts"])] else resized).append(diff)
    png_ref = torch.tensor(ref["png_scores"])
    return {"ids": ids, "png": ((png - png_ref).abs() / png_ref).max().item(),
            "exact_max": max(d.max().item() for d in exact), "resized_max": max(d.max().item() for d in resized),
            "resized_mean": max(d.mean().item() for d in resized)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=str(REPO / ".venv-t2v" / "bin" / "python"),
                        help="Python of the reference environment (default: %(default)s)")
    parser.add_argument("--qwen_python", default=str(REPO / ".venv-t2v-qwen" / "bin" / "python"),
                        help="Python of the Qwen2.5-VL reference environment (default: %(default)s; skipped if absent)")
    parser.add_argument("--reference", default=None, help="a folder t2v_reference.py already wrote (default: run it)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not args.reference and not Path(args.python).is_file():
        raise SystemExit(f"error: no reference environment at {args.python}: `bash .ci/run` builds it (and links it "
                         "as .venv-t2v), or pass --python")
    if args.reference:
        reference = Path(args.reference)
    else:
        reference = Path(tempfile.mkdtemp(prefix="t2v_reference_"))
        start = time.perf_counter()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": ""}
        script = str(REPO / "tests" / "parity" / "t2v_reference.py")
        subprocess.run([args.python, script, str(reference), "clip_t5,llava"], env=env, check=True, capture_output=True)
        print(f"reference side (t2v-metrics 3.0): {time.perf_counter() - start:.0f} s, in {reference}")
        if Path(args.qwen_python).is_file():
            start = time.perf_counter()
            subprocess.run([args.qwen_python, script, str(reference), "qwen"], env=env, check=True, capture_output=True)
            print(f"reference side, Qwen2.5-VL: {time.perf_counter() - start:.0f} s")
    print("| family | checkpoint | token ids | PNG score rel. diff (max) | tensor score rel. diff (max) | "
          "gradient rel. diff (max) | gradient cosine (min) |")
    print("|---|---|---|---|---|---|---|")
    for family in FAMILIES:
        for variant in VARIANTS:
            m = measure(reference, family, variant)
            print(f"| {family} | {variant} | {'identical' if m['ids'] else 'DIFFER'} | {m['png']:.2e} | "
                  f"{m['score']:.2e} | {m['grad']:.2e} | {m['cosine']:.8f} |")
    if (reference / "qwen2_5_vl" / "reference.pt").is_file():
        q = measure_qwen(reference)
        print(f"\nQwen2.5-VL (t2v_metrics' template): ids and grid {'identical' if q['ids'] else 'DIFFER'}; "
              f"pixel_values max abs diff {q['exact_max']:.2e} without resize, {q['resized_max']:.3f} max / "
              f"{q['resized_mean']:.4f} mean with resize; PNG score max rel. diff {q['png']:.2e}")


if __name__ == "__main__":
    main()
