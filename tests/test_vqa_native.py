"""VQAScore with transformers-native VLMs (LLaVA-1.5, Qwen2.5-VL, SmolVLM, InstructBLIP) on tiny random models.

For each family: the torch preprocessing against the transformers image processor (PIL backend) on random 8-bit
images, the score against exp(-loss) of the model's own cross-entropy on independently built inputs, and the
gradient w.r.t. the image.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from noise_diffusion.errors import UserError
from noise_diffusion.testing import vqa as tv
from noise_diffusion.verifiers import ARCHITECTURES, VERIFIERS, load_verifier

QUESTION = 'Does this figure show "{}"? Please answer yes or no.'
SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the user's questions.")


def random_images(shape, seed=0):
    rng = np.random.default_rng(seed)
    arrays = rng.integers(0, 256, size=(shape[0], shape[2], shape[3], 3), dtype=np.uint8)
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 255, [Image.fromarray(a) for a in arrays]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("native")
    return {
        "llava": tv.build_tiny_llava(root / "llava"),
        "qwen": tv.build_tiny_qwen2_5_vl(root / "qwen"),
        "smolvlm": tv.build_tiny_smolvlm(root / "smolvlm"),
        "idefics3": tv.build_tiny_smolvlm(root / "idefics3", idefics3=True),  # SmolVLM-256M's config says idefics3
        "instructblip": tv.build_tiny_instructblip(root / "instructblip"),
    }


@pytest.fixture(scope="module")
def verifiers(folders):
    return {family: load_verifier(str(folder)) for family, folder in folders.items()}


def loss_score(model, labels_from, **inputs):
    """exp(-mean cross-entropy) of the tokens from ``labels_from`` on, by the model's own loss."""
    labels = inputs["input_ids"].clone()
    labels[:, :labels_from] = -100
    return torch.exp(-model(**inputs, labels=labels).loss)


def test_registered_names_and_architectures():
    for name in ("clip-flant5-xxl", "clip-flant5-xl", "llava-v1.5-7b", "llava-v1.5-13b", "instructblip-flant5-xl",
                 "instructblip-flant5-xxl", "qwen2.5-vl-3b", "qwen2.5-vl-7b", "smolvlm-256m", "sharegpt4v-7b",
                 "sharegpt4v-13b"):
        assert name in VERIFIERS
    for model_type in ("clip_t5", "llava", "instructblip", "qwen2_5_vl", "qwen2_vl", "idefics3", "smolvlm", "share4v"):
        assert model_type in ARCHITECTURES


def test_llava(folders, verifiers):
    from transformers import AutoTokenizer, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    verifier, folder = verifiers["llava"], folders["llava"]
    image_processor = CLIPImageProcessorPil.from_pretrained(folder)
    images, pils = random_images((2, 3, 16, 16))  # the tower's size: no resize, exact up to float rounding
    assert torch.allclose(verifier.preprocess(images), image_processor(pils, return_tensors="pt")["pixel_values"], atol=1e-5)
    # the processor expands <image> into the image tokens; the answer is "Yes</s>" as VQAScore scores LLaVA-1.5
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=AutoTokenizer.from_pretrained(folder),
                               patch_size=8, vision_feature_select_strategy="default", num_additional_image_tokens=1)
    prompt = f"{SYSTEM} USER: <image>\n{QUESTION.format('a cat')} ASSISTANT:"
    n_prompt = processor(text=[prompt], images=pils[:1], return_tensors="pt")["input_ids"].shape[1]
    inputs = processor(text=[prompt + " Yes</s>"], images=pils[:1], return_tensors="pt")
    expected = loss_score(verifier.model, n_prompt, **inputs)
    assert torch.allclose(verifier(images[:1], ["a cat"]), expected, rtol=1e-4)


def test_qwen2_5_vl(folders, verifiers):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    verifier, folder = verifiers["qwen"], folders["qwen"]
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(folder)
    images, pils = random_images((1, 3, 32, 24), seed=1)  # multiples of patch*merge = 8: no resize
    ours = verifier.image_inputs(images)
    theirs = image_processor(pils, return_tensors="pt")
    assert torch.equal(ours["image_grid_thw"], theirs["image_grid_thw"])
    assert torch.allclose(ours["pixel_values"], theirs["pixel_values"], atol=1e-5)
    # resized (36x28 -> 32x32) white noise, the worst case: torch bicubic vs PIL (two 8-bit passes); measured max 0.06,
    # mean 0.0014 in [0, 1]; tolerance (normalised units, /0.27) max 0.25, mean 0.01
    images2, pils2 = random_images((1, 3, 36, 28), seed=2)
    resized, reference = verifier.image_inputs(images2), image_processor(pils2, return_tensors="pt")
    assert torch.equal(resized["image_grid_thw"], reference["image_grid_thw"])
    diff = (resized["pixel_values"] - reference["pixel_values"]).abs()
    assert diff.max() < 0.25 and diff.mean() < 0.01, (diff.max(), diff.mean())
    # inputs built directly (Qwen2VLProcessor needs torchvision): Qwen's chat format, grid 8x6 / merge 4 = 12 tokens
    tok = verifier.tokenizer
    prompt = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
              + "<|image_pad|>" * 12 + f"<|vision_end|>{QUESTION.format('a cat')}<|im_end|>\n<|im_start|>assistant\n")
    ids = torch.tensor([tok(prompt + "Yes").input_ids])
    image_id = tok.convert_tokens_to_ids("<|image_pad|>")
    expected = loss_score(verifier.model, len(tok(prompt).input_ids), input_ids=ids, pixel_values=theirs["pixel_values"],
                          image_grid_thw=theirs["image_grid_thw"], mm_token_type_ids=(ids == image_id).int())
    assert torch.allclose(verifier(images, ["a cat"]), expected, rtol=1e-4)


@pytest.mark.parametrize("family", ["smolvlm", "idefics3"])
def test_smolvlm(folders, verifiers, family):
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

    verifier, folder = verifiers[family], folders[family]
    image_processor = SmolVLMImageProcessorPil.from_pretrained(folder)
    images, pils = random_images((1, 3, 16, 16), seed=3)
    theirs = image_processor([pils], return_tensors="pt")["pixel_values"]  # [1, 1, 3, 16, 16], one global image
    assert torch.allclose(verifier.image_inputs(images)["pixel_values"], theirs, atol=1e-5)
    # SmolVLM's chat format; (16 / 4)^2 patches / scale 2^2 = 4 image tokens
    prompt = ("<|im_start|>User:<fake_token_around_image><global-img>" + "<image>" * 4
              + f"<fake_token_around_image>{QUESTION.format('a cat')}<end_of_utterance>\nAssistant:")
    tok = verifier.tokenizer
    ids = torch.tensor([tok(prompt + " Yes").input_ids])
    expected = loss_score(verifier.model, len(tok(prompt).input_ids), input_ids=ids, pixel_values=theirs)
    assert torch.allclose(verifier(images, ["a cat"]), expected, rtol=1e-4)


def test_instructblip(folders, verifiers):
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    verifier, folder = verifiers["instructblip"], folders["instructblip"]
    image_processor = BlipImageProcessorPil.from_pretrained(folder)
    images, pils = random_images((1, 3, 16, 16), seed=4)
    pixels = image_processor(pils, return_tensors="pt")["pixel_values"]
    assert torch.allclose(verifier.preprocess(images), pixels, atol=1e-5)
    # VQAScore's InstructBLIP defaults: "Question: ..." and the answer "yes" (with </s>); query tokens before the text
    model, tok, qtok = verifier.model, verifier.tokenizer, verifier.qformer_tokenizer
    question = "Question: " + QUESTION.format("a cat")
    image_id = tok.convert_tokens_to_ids("<image>")
    ids = torch.tensor([[image_id] * model.config.num_query_tokens + tok(question).input_ids])
    q = qtok(question, return_tensors="pt")
    labels = torch.tensor([tok("yes").input_ids])
    loss = model(pixel_values=pixels, input_ids=ids, qformer_input_ids=q.input_ids,
                 qformer_attention_mask=q.attention_mask, labels=labels).loss
    assert torch.allclose(verifier(images, ["a cat"]), torch.exp(-loss), rtol=1e-4)


@pytest.mark.parametrize("family", ["llava", "qwen", "smolvlm", "idefics3", "instructblip"])
def test_gradient_wrt_image(verifiers, family):
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    scores = verifiers[family](images, ["a cat", "a red dog"])
    assert scores.shape == (2,) and scores.dtype == torch.float32 and ((scores > 0) & (scores < 1)).all()
    scores.sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def test_loading_converts_bad_files_not_the_verifiers_own_bugs(tmp_path, monkeypatch):
    from noise_diffusion import verifiers

    (tmp_path / "config.json").write_text('{"model_type": "clip"}')
    with pytest.raises(UserError, match="cannot load verifier"):  # transformers cannot read the folder: bad input
        load_verifier(str(tmp_path))

    def buggy(name_or_path, device="cpu", dtype=None, **options):
        raise ValueError("an internal bug")

    monkeypatch.setitem(verifiers.ARCHITECTURES, "clip", buggy)
    with pytest.raises(ValueError, match="an internal bug") as caught:
        load_verifier(str(tmp_path))
    assert not isinstance(caught.value, UserError)
