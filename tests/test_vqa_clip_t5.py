"""CLIP-FlanT5 VQAScore on a tiny checkpoint written in the original ``clip_t5`` key layout (random weights)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from noise_diffusion.errors import UserError
from noise_diffusion.verifiers import load_verifier
from noise_diffusion.verifiers.vqa.clip_t5 import SYSTEM_MESSAGE
from noise_diffusion.testing.vqa import build_tiny_clip_t5


@pytest.fixture(scope="module")
def clip_t5_dir(tmp_path_factory):
    return build_tiny_clip_t5(tmp_path_factory.mktemp("clip_t5"))


@pytest.fixture(scope="module")
def verifier(clip_t5_dir):
    return load_verifier(str(clip_t5_dir))  # through ARCHITECTURES["clip_t5"]


def random_images(shape, seed=0):
    """uint8-valued images (as the processor sees them) as float in [0, 1], and the same as PIL."""
    rng = np.random.default_rng(seed)
    arrays = rng.integers(0, 256, size=(shape[0], shape[2], shape[3], 3), dtype=np.uint8)
    tensor = torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 255
    return tensor, [Image.fromarray(a) for a in arrays]


def independent_score(folder, pixels, prompt):
    """exp(mean log p("Yes" </s>)) from separately built transformers parts and T5's own cross-entropy loss."""
    from transformers import AutoTokenizer, CLIPVisionModel, T5Config, T5ForConditionalGeneration

    config = json.loads((folder / "config.json").read_text())
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    t5 = T5ForConditionalGeneration(T5Config(**{k: v for k, v in config.items() if k != "model_type"})).eval()
    assert config["tie_word_embeddings"] is False  # FlanT5: its own output layer, which transformers 5 ties anyway
    t5.lm_head.weight = torch.nn.Parameter(torch.empty_like(t5.lm_head.weight))  # untie before loading
    t5.load_state_dict({k: v for k, v in state.items() if not k.startswith(("vision_tower.", "mm_projector.", "embed_tokens"))})
    tower = CLIPVisionModel.from_pretrained(config["mm_vision_tower"]).eval()
    patches = tower(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
    w0, b0, w2, b2 = (state[f"mm_projector.{k}"] for k in ("0.weight", "0.bias", "2.weight", "2.bias"))
    image = torch.nn.functional.gelu(patches @ w0.T + b0) @ w2.T + b2
    tok = AutoTokenizer.from_pretrained(folder)
    question = f'Does this figure show "{prompt}"? Please answer yes or no.'
    before = tok(f"{SYSTEM_MESSAGE} USER: ").input_ids
    after = tok(f"\n{question} ASSISTANT: ").input_ids
    embed = t5.shared
    inputs = torch.cat([embed(torch.tensor(before)), image[0], embed(torch.tensor(after))])[None]
    labels = torch.tensor([tok("Yes").input_ids])
    assert labels[0, -1].item() == tok.eos_token_id  # the answer includes </s>, as the original computes
    loss = t5(inputs_embeds=inputs, labels=labels).loss
    return torch.exp(-loss)


def test_preprocessing_matches_clip_processor(verifier, clip_t5_dir):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    processor = CLIPImageProcessorPil.from_pretrained(clip_t5_dir / "vision_tower")
    # no resize needed (16 px = the tower's size): exact up to float rounding
    images, pils = random_images((3, 3, 16, 16))
    expected = processor(pils, return_tensors="pt")["pixel_values"]
    assert torch.allclose(verifier.preprocess(images), expected, atol=1e-5)
    # downscale 2x: torch's antialiased bicubic vs PIL's bicubic (which rounds to 8 bit); measured max 0.014, mean
    # 0.004 in normalised units; tolerance max 0.05 (~0.013 in [0, 1]), mean 0.01
    images, pils = random_images((2, 3, 32, 32), seed=1)
    diff = (verifier.preprocess(images) - processor(pils, return_tensors="pt")["pixel_values"]).abs()
    assert diff.max() < 0.05 and diff.mean() < 0.01, (diff.max(), diff.mean())


def test_pad_to_square_matches_expand2square(verifier, clip_t5_dir):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    processor = CLIPImageProcessorPil.from_pretrained(clip_t5_dir / "vision_tower")
    images, pils = random_images((1, 3, 16, 10), seed=2)  # width 10 < height 16: padded left/right by 3
    colour = tuple(int(m * 255) for m in processor.image_mean)
    square = Image.new("RGB", (16, 16), colour)
    square.paste(pils[0], (3, 0))
    expected = processor([square], return_tensors="pt")["pixel_values"]
    assert torch.allclose(verifier.preprocess(images), expected, atol=1e-5)


def test_score_equals_independent_exp_mean_logprob(verifier, clip_t5_dir):
    images, _ = random_images((2, 3, 16, 16), seed=3)
    prompts = ["a red cube", "two dogs on grass"]
    scores = verifier(images, prompts)
    assert scores.dtype == torch.float32 and scores.shape == (2,)
    assert ((scores > 0) & (scores < 1)).all()
    for i, prompt in enumerate(prompts):
        pixels = verifier.preprocess(images[i : i + 1])
        expected = independent_score(clip_t5_dir, pixels, prompt)
        assert torch.allclose(scores[i], expected, rtol=1e-4), (scores[i], expected)


def test_gradient_wrt_image_is_finite_and_nonzero(verifier):
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    verifier(images, ["a cat", "a dog"]).sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in verifier.parameters())


def test_templates_are_options(clip_t5_dir, verifier):
    custom = load_verifier(str(clip_t5_dir), question_template='Is "{prompt}" shown?', answer_template="No")
    images, pils = random_images((1, 3, 16, 16), seed=4)
    assert not torch.allclose(custom(images, ["a cat"]), verifier(images, ["a cat"]))
    # score_pil goes through the same forward without gradients
    assert torch.allclose(custom.score_pil(pils, ["a cat"]), custom(images, ["a cat"]).detach())
    with pytest.raises(UserError, match="template"):
        load_verifier(str(clip_t5_dir), question_template="Does it show {caption}?")


def test_vision_tower_from_its_own_repo(tmp_path, verifier):
    """Without vision keys in the checkpoint, the tower comes from ``mm_vision_tower`` (as the original loads it)."""
    folder = build_tiny_clip_t5(tmp_path / "no_tower", tower_in_checkpoint=False)
    assert not any(k.startswith("vision_tower") for k in torch.load(folder / "pytorch_model.bin", weights_only=True))
    other = load_verifier(str(folder))
    images, _ = random_images((1, 3, 16, 16), seed=5)
    assert torch.allclose(other(images, ["a cat"]), verifier(images, ["a cat"]), rtol=1e-5)  # same seeds, same weights


def test_wrong_or_missing_key_is_named(tmp_path):
    folder = build_tiny_clip_t5(tmp_path / "bad")
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    state["mm_projector.5.weight"] = state.pop("mm_projector.2.weight")
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(UserError) as error:
        load_verifier(str(folder))
    message = str(error.value)
    assert "unexpected keys: mm_projector.5.weight" in message and "missing keys: mm_projector.2.weight" in message
    assert "\n" not in message


def test_missing_language_model_key_is_named_as_in_the_checkpoint(tmp_path):
    folder = build_tiny_clip_t5(tmp_path / "partial")
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    del state["encoder.block.1.layer.0.SelfAttention.q.weight"]
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(UserError, match=r"missing keys: encoder\.block\.1\.layer\.0\.SelfAttention\.q\.weight\)"):
        load_verifier(str(folder))


def transformers4_tower_keys(state: dict) -> dict:
    """The tower keys as transformers 4 writes them (``CLIPVisionModel`` had a ``vision_model.`` submodule)."""
    prefix = "vision_tower.vision_tower."
    return {prefix + "vision_model." + k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def write_sharded(folder, state: dict, shards: int = 3) -> None:
    """Replace ``pytorch_model.bin`` by ``shards`` files and a ``pytorch_model.bin.index.json``, as save_pretrained does."""
    (folder / "pytorch_model.bin").unlink()
    keys = sorted(state)
    weight_map = {}
    for i in range(shards):
        name = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = keys[i::shards]
        torch.save({k: state[k] for k in part}, folder / name)
        weight_map.update({k: name for k in part})
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("sharded", [False, True], ids=["single_bin", "sharded_bin"])
def test_transformers4_tower_keys_load(tmp_path, verifier, sharded):
    """``vision_tower.vision_tower.vision_model.*`` (transformers 4's spelling) loads, as one file or sharded."""
    folder = build_tiny_clip_t5(tmp_path / "t4")
    state = transformers4_tower_keys(torch.load(folder / "pytorch_model.bin", weights_only=True))
    assert any(k.startswith("vision_tower.vision_tower.vision_model.embeddings.") for k in state)
    if sharded:
        write_sharded(folder, state)
    else:
        torch.save(state, folder / "pytorch_model.bin")
    other = load_verifier(str(folder))
    loaded = other.model.vision_tower.state_dict()
    for key, value in state.items():
        if key.startswith("vision_tower.vision_tower.vision_model."):
            assert torch.equal(loaded[key[len("vision_tower.vision_tower.vision_model."):]], value), key
    images, _ = random_images((1, 3, 16, 16), seed=6)
    assert torch.allclose(other(images, ["a cat"]), verifier(images, ["a cat"]), rtol=1e-5)


def test_sharded_checkpoint_without_tower_keys_loads(tmp_path, verifier):
    folder = build_tiny_clip_t5(tmp_path / "sharded_no_tower", tower_in_checkpoint=False)
    write_sharded(folder, torch.load(folder / "pytorch_model.bin", weights_only=True), shards=2)
    images, _ = random_images((1, 3, 16, 16), seed=7)
    assert torch.allclose(load_verifier(str(folder))(images, ["a dog"]), verifier(images, ["a dog"]), rtol=1e-5)


def test_missing_tower_key_named_in_the_checkpoints_spelling(tmp_path):
    folder = build_tiny_clip_t5(tmp_path / "t4_partial")
    state = transformers4_tower_keys(torch.load(folder / "pytorch_model.bin", weights_only=True))
    del state["vision_tower.vision_tower.vision_model.post_layernorm.weight"]
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(UserError, match=r"missing keys: vision_tower\.vision_tower\.vision_model\.post_layernorm\.weight"):
        load_verifier(str(folder))


def test_untied_output_layer_comes_from_the_checkpoint(clip_t5_dir, verifier):
    """config.json says tie_word_embeddings: false (FlanT5), so lm_head is the checkpoint's, not the embeddings."""
    state = torch.load(clip_t5_dir / "pytorch_model.bin", weights_only=True)
    lm = verifier.model.language_model
    assert torch.equal(lm.lm_head.weight, state["lm_head.weight"])
    assert not torch.equal(state["lm_head.weight"], state["shared.weight"])
    assert lm.lm_head.weight.data_ptr() != lm.shared.weight.data_ptr()
    assert lm.config.scale_decoder_outputs is False  # T5 v1.1: logits not rescaled by d_model ** -0.5


def test_missing_untied_output_layer_is_an_error(tmp_path):
    folder = build_tiny_clip_t5(tmp_path / "no_head")
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    del state["lm_head.weight"]
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(UserError) as error:
        load_verifier(str(folder))
    assert "lm_head.weight" in str(error.value) and "tie_word_embeddings" in str(error.value)
    assert "\n" not in str(error.value)


def test_tied_checkpoint_uses_the_embeddings_as_output_layer(tmp_path):
    """A T5 config without tie_word_embeddings (transformers 4's default: tied) needs no lm_head.weight; logits are
    then scaled by d_model ** -0.5 as the original T5 does."""
    folder = build_tiny_clip_t5(tmp_path / "tied")
    config = json.loads((folder / "config.json").read_text())
    del config["tie_word_embeddings"]
    (folder / "config.json").write_text(json.dumps(config))
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    del state["lm_head.weight"]
    torch.save(state, folder / "pytorch_model.bin")
    lm = load_verifier(str(folder)).model.language_model
    assert lm.lm_head.weight is lm.shared.weight and lm.config.scale_decoder_outputs is True
