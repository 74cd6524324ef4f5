"""LLaVA-1.5 checkpoints in the original LLaVA code's layout (liuhaotian/llava-v1.5-*, ShareGPT4V) on a tiny model."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from noise_diffusion.errors import UserError
from noise_diffusion.verifiers import load_verifier
from noise_diffusion.verifiers.vqa.llava_original import OriginalLlavaVerifier
from noise_diffusion.testing.vqa import build_tiny_original_llava

SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the user's questions.")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_tiny_original_llava(tmp_path_factory.mktemp("llava_original"))


def independent_score(folder, pil, prompt):
    """LLaMA + CLIP tower + projector assembled by hand from the original checkpoint; the image padded to a square
    with the mean colour (expand2square) and run through the CLIP processor; exp(mean log p) by log_softmax/gather."""
    from transformers import AutoTokenizer, CLIPVisionModel, LlamaConfig, LlamaForCausalLM
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    config = json.loads((folder / "config.json").read_text())
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    llama = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in config.items() if k != "model_type"})).eval()
    llama.load_state_dict({k: v for k, v in state.items() if not k.startswith(("model.vision_tower", "model.mm_projector"))})
    tower = CLIPVisionModel.from_pretrained(config["mm_vision_tower"]).eval()
    processor = CLIPImageProcessorPil.from_pretrained(config["mm_vision_tower"])
    side = max(pil.size)
    square = Image.new("RGB", (side, side), tuple(int(m * 255) for m in processor.image_mean))
    square.paste(pil, ((side - pil.size[0]) // 2, (side - pil.size[1]) // 2))
    pixels = processor([square], return_tensors="pt")["pixel_values"]
    patches = tower(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][0, 1:]
    w0, b0, w2, b2 = (state[f"model.mm_projector.{k}"] for k in ("0.weight", "0.bias", "2.weight", "2.bias"))
    image = torch.nn.functional.gelu(patches @ w0.T + b0) @ w2.T + b2
    tok = AutoTokenizer.from_pretrained(folder)
    after = f'\nDoes this figure show "{prompt}"? Please answer yes or no. ASSISTANT: '
    first = tok(f"{SYSTEM} USER: ").input_ids
    rest = tok(after + "Yes</s>").input_ids[1:]  # chunks tokenised apart, the second without its BOS
    n_answer = len(rest) - len(tok(after.rstrip()).input_ids[1:])
    embed = llama.get_input_embeddings()
    inputs = torch.cat([embed(torch.tensor(first)), image, embed(torch.tensor(rest))])[None]
    logits = llama(inputs_embeds=inputs).logits[0]
    targets = torch.tensor(rest[-n_answer:])
    log_probs = torch.log_softmax(logits[-n_answer - 1 : -1], dim=-1)
    return log_probs[torch.arange(n_answer), targets].mean().exp()


def test_original_layout_loads_and_scores_like_the_parts(folder):
    verifier = load_verifier(str(folder))  # config model_type "llava" with mm_vision_tower -> the original layout
    assert isinstance(verifier, OriginalLlavaVerifier)
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, size=(16, 10, 3), dtype=np.uint8)  # not square: padded to 16x16, no resize
    image = torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255
    score = verifier(image, ["a cat"])
    assert 0 < float(score) < 1
    assert torch.allclose(score, independent_score(folder, Image.fromarray(array), "a cat"), rtol=1e-4)
    image.requires_grad_(True)
    verifier(image, ["a cat"]).backward()
    assert torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0


def test_tower_from_its_own_repo_and_wrong_key(tmp_path, folder):
    other = build_tiny_original_llava(tmp_path / "no_tower", tower_in_checkpoint=False)
    images = torch.rand(1, 3, 16, 16)
    assert torch.allclose(load_verifier(str(other))(images, ["a cat"]), load_verifier(str(folder))(images, ["a cat"]))
    state = torch.load(other / "pytorch_model.bin", weights_only=True)
    state["model.mm_projector.1.weight"] = state.pop("model.mm_projector.0.weight")
    torch.save(state, other / "pytorch_model.bin")
    with pytest.raises(UserError, match=r"missing keys: model\.mm_projector\.0\.weight; "
                                        r"unexpected keys: model\.mm_projector\.1\.weight"):
        load_verifier(str(other))
