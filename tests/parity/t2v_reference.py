"""Reference side of the parity suite: runs in a *reference* environment (t2v-metrics 3.0, transformers 4.49; see
requirements-t2v*.txt), never in the project's, and imports nothing of the project.

    .venv-t2v/bin/python tests/parity/t2v_reference.py OUT_DIR clip_t5,llava   # CLIP-FlanT5, LLaVA-1.5, ShareGPT4V
    .venv-t2v-qwen/bin/python tests/parity/t2v_reference.py OUT_DIR qwen      # Qwen2.5-VL (needs torchvision)

It builds tiny random checkpoints with t2v_metrics' own model classes and saves them as those classes save
(``save_pretrained`` to ``pytorch_model.bin``, sharded ``.bin`` + index, with and without the vision-tower keys), with
tokenizers trained here by sentencepiece and saved by the slow transformers tokenizers, and a tiny CLIP tower folder
at 336 px / patch 14 with the old integer-style preprocessor config. It then scores fixed images and prompts with
t2v_metrics' own scoring code and writes, per family, ``reference.pt`` (scores, image gradients, token ids, labels)
for the project side (tests/test_parity_t2v_metrics.py) to compare with.

Only the input feeding is done here: t2v_metrics scores image *files*; for the gradient on [0, 1] tensors its
``load_images`` is replaced by CLIP normalisation of the tensor (checked against its own image processor), and the
``torch.no_grad`` decorators of its ``forward`` and of the vision tower are stepped over (``__wrapped__``), as the
Noise Diffusion authors' in-loop use of the same model does. t2v_metrics loads models in bfloat16; the weights built
here are exactly representable in bfloat16, so casting the loaded model back to float32 restores them exactly.
Qwen2.5-VL is scored by t2v_metrics' ``Qwen2VLModel`` on the PNGs only (it runs ``generate`` under
``torch.inference_mode``); the ids, grid and pixels its ``generate`` feeds the model are recorded too.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image

PROMPTS = ["a red cube on top of a blue sphere", "two dogs playing in the snow, photo"]
TENSOR_SIZE = 336
SEED = 0


def import_t2v_metrics(*modules: str) -> list:
    """t2v_metrics' model modules without its package ``__init__``s, which check for ffmpeg and import every model
    family (each with its own heavy dependencies); the modules themselves run unchanged."""
    import importlib

    spec = importlib.util.find_spec("t2v_metrics")
    if spec is None:
        raise SystemExit("t2v_metrics is not installed in this environment")
    root = spec.submodule_search_locations[0]
    for name, sub in (("t2v_metrics", ""), ("t2v_metrics.models", "models"),
                      ("t2v_metrics.models.vqascore_models", "models/vqascore_models")):
        module = types.ModuleType(name)
        module.__path__ = [os.path.join(root, sub)]
        sys.modules[name] = module
    return [importlib.import_module(f"t2v_metrics.models.vqascore_models.{m}") for m in modules]


# ---------------------------------------------------------------------------------------------------------------- data

CORPUS_WORDS = (
    "a an the of on in with and or to is are was this that figure show shows image photo picture does do please answer "
    "yes no red blue green yellow black white cube sphere ball box dog dogs cat cats two three one top bottom left "
    "right playing snow grass field chat between curious user artificial intelligence assistant gives helpful "
    "detailed polite answers user's questions question USER ASSISTANT Yes No Question Does figure"
).split()


def corpus() -> list[str]:
    """Training text for the tokenizers: the prompts, the chat format's words, and random sentences of them."""
    rng = np.random.default_rng(SEED)
    system = ("A chat between a curious user and an artificial intelligence assistant. "
              "The assistant gives helpful, detailed, and polite answers to the user's questions.")
    lines = [system, *PROMPTS, *(f'Does this figure show "{p}"? Please answer yes or no.' for p in PROMPTS)]
    lines += [f"USER: <x>\nQuestion ASSISTANT: Yes" for _ in range(3)]
    for _ in range(400):
        words = rng.choice(CORPUS_WORDS, size=int(rng.integers(3, 12)))
        lines.append(" ".join(words) + str(rng.choice([".", "?", ",", "!", '"', ":", "'s", ""])))
    lines.append("0123456789 ()[]{}<>/\\|-_=+*&^%$#@~`;")
    return lines


def train_sentencepiece(path: Path, **options) -> Path:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus()), model_writer=model, character_coverage=1.0,
                                   hard_vocab_limit=False, minloglevel=2, **options)
    path.write_bytes(model.getvalue())
    return path


def write_t5_tokenizer(folder: Path) -> Path:
    """A FlanT5-like tokenizer: sentencepiece unigram (pad 0, eos 1, unk 2, no bos) + 100 extra ids, slow class."""
    from transformers import T5Tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    spiece = train_sentencepiece(folder / "trained.model", model_type="unigram", vocab_size=220, pad_id=0, eos_id=1,
                                 unk_id=2, bos_id=-1)
    T5Tokenizer(vocab_file=str(spiece), extra_ids=100).save_pretrained(folder)  # legacy default, as flan-t5's config
    spiece.unlink()
    return folder


def write_llama_tokenizer(folder: Path, legacy: bool) -> Path:
    """A LLaMA-like tokenizer: sentencepiece BPE with byte fallback (unk 0, bos 1, eos 2), slow LlamaTokenizer."""
    from transformers import LlamaTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    spiece = train_sentencepiece(folder / "trained.model", model_type="bpe", vocab_size=420, unk_id=0, bos_id=1,
                                 eos_id=2, pad_id=-1, byte_fallback=True, split_digits=True,
                                 normalization_rule_name="identity", remove_extra_whitespaces=False,
                                 allow_whitespace_only_pieces=True)
    LlamaTokenizer(vocab_file=str(spiece), legacy=legacy).save_pretrained(folder)
    spiece.unlink()
    return folder


def bf16_exact_(module: torch.nn.Module, head_scale: dict[str, float] | None = None) -> None:
    """Round every weight to a bfloat16 value (t2v_metrics' bfloat16 cast is then lossless); ``head_scale`` shrinks
    named weights first (output layers: answer probabilities away from 0)."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            if head_scale and name in head_scale:
                param.mul_(head_scale[name])
            param.copy_(param.to(torch.bfloat16).float())


def write_clip_tower(folder: Path, seed: int) -> Path:
    """A tiny CLIP (text + vision) at 336 px, patch 14, saved as ``pytorch_model.bin`` with the integer-style
    ``preprocessor_config.json`` of openai/clip-vit-large-patch14-336."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(vocab_size=99, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         max_position_embeddings=32),
        vision_config=dict(hidden_size=24, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2,
                           image_size=336, patch_size=14),
        projection_dim=16,
    )
    model = CLIPModel(config)
    bf16_exact_(model)
    model.save_pretrained(folder, safe_serialization=False)
    processor = {"crop_size": 336, "do_center_crop": True, "do_normalize": True, "do_resize": True,
                 "feature_extractor_type": "CLIPFeatureExtractor",
                 "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
                 "resample": 3, "size": 336}
    (folder / "preprocessor_config.json").write_text(json.dumps(processor, indent=2), encoding="utf-8")
    return folder


def write_inputs(folder: Path) -> dict:
    """Smooth test images (as natural images are, not white noise): PNGs that need padding and resizing, and [0, 1]
    tensors at 336 px that need neither."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED + 1)

    def smooth(h: int, w: int) -> np.ndarray:
        y, x = np.mgrid[0:h, 0:w] / max(h, w)
        channels = []
        for _ in range(3):
            f = rng.uniform(1, 6, size=4)
            p = rng.uniform(0, 2 * np.pi, size=4)
            c = (np.sin(f[0] * 2 * np.pi * x + p[0]) * np.cos(f[1] * 2 * np.pi * y + p[1])
                 + 0.5 * np.sin(f[2] * 2 * np.pi * (x + y) + p[2]) + 0.3 * np.cos(f[3] * 2 * np.pi * (x - y) + p[3]))
            channels.append(c)
        image = np.stack(channels, -1)
        return (image - image.min()) / (image.max() - image.min())

    pngs = []
    sizes = {"square_512.png": (512, 512), "wide_384x512.png": (384, 512), "tall_448x320.png": (448, 320),
             "multiple_of_28_336x448.png": (336, 448)}  # the last needs no resize for Qwen2.5-VL
    for name, (h, w) in sizes.items():
        Image.fromarray(np.round(smooth(h, w) * 255).astype(np.uint8)).save(folder / name)
        pngs.append(str(folder / name))
    tensors = torch.from_numpy(np.stack([smooth(TENSOR_SIZE, TENSOR_SIZE) for _ in PROMPTS])).permute(0, 3, 1, 2).float()
    torch.save(tensors, folder / "tensors.pt")
    inputs = {"pngs": pngs, "prompts": PROMPTS, "tensors": str(folder / "tensors.pt")}
    (folder / "inputs.json").write_text(json.dumps(inputs, indent=1), encoding="utf-8")
    return inputs


def save_variants(model, folder: Path, tower_prefix: str) -> dict[str, str]:
    """The checkpoint as the original class saves it: one ``.bin`` or sharded ``.bin`` + index, with or without the
    vision-tower keys (``state_dict`` minus the tower, as a checkpoint saved before the tower was attached)."""
    full = model.state_dict()
    no_tower = {k: v for k, v in full.items() if not k.startswith(tower_prefix)}
    assert len(no_tower) < len(full), "the model holds no tower keys to leave out"
    variants = {}
    for name, state, shard in (("bin", full, None), ("bin_no_tower", no_tower, None),
                               ("sharded", full, "100KB"), ("sharded_no_tower", no_tower, "100KB")):
        path = folder / name
        kwargs = {"max_shard_size": shard} if shard else {"max_shard_size": "10GB"}
        model.save_pretrained(path, state_dict=state, safe_serialization=False, **kwargs)
        if shard:
            assert (path / "pytorch_model.bin.index.json").is_file(), f"{name}: not sharded"
        variants[name] = str(path)
    return variants


def normalised(tensors: torch.Tensor, image_processor) -> torch.Tensor:
    """CLIP normalisation of [0, 1] tensors already at the processor's size, checked against the processor itself."""
    mean = torch.tensor(image_processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(image_processor.image_std).view(1, 3, 1, 1)
    pixels = (tensors - mean) / std
    expected = image_processor.preprocess(list(tensors.detach().numpy()), do_rescale=False, do_resize=False,
                                          do_center_crop=False, return_tensors="pt", input_data_format="channels_first")
    assert torch.allclose(pixels.detach(), expected["pixel_values"], atol=1e-5), "normalisation differs from the processor"
    return pixels


def unwrapped(function):
    while hasattr(function, "__wrapped__"):
        function = function.__wrapped__
    return function


def score_with_gradient(scorer, forward, tensors: torch.Tensor, prompts: list[str]):
    """t2v_metrics' forward (undecorated) on [0, 1] tensors: score per item, and d score / d tensor."""
    scores, grads = [], []
    for i, prompt in enumerate(prompts):
        image = tensors[i : i + 1].clone().requires_grad_(True)
        scorer.load_images = lambda paths, image=image: normalised(image, scorer.image_processor)
        score = forward(scorer, [f"<tensor {i}>"], [prompt])[0]
        score.backward()
        scores.append(score.item())
        grads.append(image.grad[0].clone())
        del scorer.load_images
    return scores, torch.stack(grads)


def png_scores(scorer, pngs: list[str], prompts: list[str]) -> list[list[float]]:
    """t2v_metrics' own end-to-end scoring of image files (its PIL path): [image][prompt]."""
    return [[scorer.forward([png], [prompt]).item() for prompt in prompts] for png in pngs]


# ------------------------------------------------------------------------------------------------------- CLIP-FlanT5

def clip_t5_reference(out: Path, inputs: dict, clip_t5_model) -> None:
    from transformers import T5Tokenizer

    from t2v_metrics.constants import CONTEXT_LEN
    from t2v_metrics.models.vqascore_models.clip_t5.model import CLIPT5Config, CLIPT5ForConditionalGeneration
    from t2v_metrics.models.vqascore_models.clip_t5.model.multimodal_encoder import clip_encoder

    family = out / "clip_t5"
    tower = write_clip_tower(family / "vision_tower", seed=SEED + 2)
    tokenizer_dir = write_t5_tokenizer(family / "tokenizer")
    n_tokens = len(T5Tokenizer.from_pretrained(tokenizer_dir))
    torch.manual_seed(SEED + 3)
    config = CLIPT5Config(
        vocab_size=n_tokens + 28,  # as FlanT5: 32128 rows for 32100 tokens
        d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4, feed_forward_proj="gated-gelu",
        tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, dropout_rate=0.0,
        mm_vision_tower=str(tower), mm_hidden_size=24, mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2,
        mm_vision_select_feature="patch", use_mm_proj=True, architectures=["CLIPT5ForConditionalGeneration"],
    )
    model = CLIPT5ForConditionalGeneration(config)
    bf16_exact_(model, head_scale={"lm_head.weight": 0.5})
    variants = save_variants(model, family, "vision_tower.")

    results = {"tokenizer": str(tokenizer_dir), "vocab": n_tokens, "variants": {}}
    forward = unwrapped(clip_t5_model.CLIPT5Model.forward)
    tower_forward = clip_encoder.CLIPVisionTower.forward
    for name, path in variants.items():
        clip_t5_model.CLIP_T5_MODELS[name] = {
            "tokenizer": {"path": str(tokenizer_dir), "model_max_length": CONTEXT_LEN},
            "model": {"path": path, "conversation": "t5_chat", "image_aspect_ratio": "pad"},
        }
        scorer = clip_t5_model.CLIPT5Model(name, device="cpu", cache_dir=str(out / "hf_cache"))
        scorer.model.float()  # lossless: the weights are bfloat16 values
        assert not scorer.model.config.tie_word_embeddings
        record = {"png_scores": png_scores(scorer, inputs["pngs"], inputs["prompts"])}
        clip_encoder.CLIPVisionTower.forward = unwrapped(tower_forward)  # the tower's no_grad stepped over
        try:
            record["tensor_scores"], record["grads"] = score_with_gradient(
                scorer, forward, torch.load(inputs["tensors"]), inputs["prompts"])
        finally:
            clip_encoder.CLIPVisionTower.forward = tower_forward
        questions = [clip_t5_model.format_question(clip_t5_model.default_question_template.format(p), "t5_chat")
                     for p in inputs["prompts"]]
        record["input_ids"] = [clip_t5_model.t5_tokenizer_image_token(q, scorer.tokenizer) for q in questions]
        record["labels"] = [clip_t5_model.t5_tokenizer_image_token(clip_t5_model.default_answer_template.format(p),
                                                                     scorer.tokenizer) for p in inputs["prompts"]]
        record["keys"] = sorted(scorer.model.state_dict())[:3]
        results["variants"][name] = record
    torch.save(results, family / "reference.pt")


# ----------------------------------------------------------------------------------------- LLaVA-1.5 and ShareGPT4V

def llava_reference(out: Path, inputs: dict, llava_model, family_name: str, legacy: bool, model_type: str,
                    seed: int) -> None:
    from transformers import LlamaTokenizer
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from t2v_metrics.models.vqascore_models.llava.model import LlavaConfig, LlavaLlamaForCausalLM
    from t2v_metrics.models.vqascore_models.llava.model.multimodal_encoder import clip_encoder

    family = out / family_name
    tower = write_clip_tower(family / "vision_tower", seed=seed)
    write_llama_tokenizer(family, legacy=legacy)  # LLaVA checkpoints ship their tokenizer
    tok = LlamaTokenizer.from_pretrained(family)
    torch.manual_seed(seed + 1)
    config = LlavaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        mm_vision_tower=str(tower), mm_hidden_size=24, mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2,
        mm_vision_select_feature="patch", image_aspect_ratio="pad", use_mm_proj=True,
        architectures=["LlavaLlamaForCausalLM"],
    )
    model = LlavaLlamaForCausalLM(config)
    model.get_model().get_vision_tower().load_model()  # the tower attached, as after training
    bf16_exact_(model, head_scale={"lm_head.weight": 30.0})
    variants = save_variants(model, family / "checkpoints", "model.vision_tower.")
    for path in variants.values():
        for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
            (Path(path) / name).write_bytes((family / name).read_bytes())
        # t2v_metrics' copy of the class calls itself "llava-v1.5"; the published checkpoints, saved by the LLaVA
        # and ShareGPT4V code, say "llava" and "share4v" (t2v_metrics loads either: the class ignores the name)
        saved = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
        saved["model_type"] = model_type
        (Path(path) / "config.json").write_text(json.dumps(saved, indent=2), encoding="utf-8")

    results = {"vocab": len(tok), "legacy": legacy, "variants": {}}
    forward = unwrapped(llava_model.LLaVAModel.forward)
    tower_forward = clip_encoder.CLIPVisionTower.forward
    for name, path in variants.items():
        key = f"{family_name}-{name}"
        llava_model.LLAVA_MODELS[key] = {"tokenizer": {"path": path},
                                         "model": {"path": path, "conversation": "chat", "image_aspect_ratio": "pad"}}
        scorer = llava_model.LLaVAModel(key, device="cpu", cache_dir=str(out / "hf_cache"))
        scorer.model.float()  # lossless for the weights; the rotary frequencies were rounded by the bfloat16 cast:
        scorer.model.model.rotary_emb = LlamaRotaryEmbedding(config=scorer.model.config)  # recomputed in float32
        record = {"png_scores": png_scores(scorer, inputs["pngs"], inputs["prompts"])}
        clip_encoder.CLIPVisionTower.forward = unwrapped(tower_forward)
        try:
            record["tensor_scores"], record["grads"] = score_with_gradient(
                scorer, forward, torch.load(inputs["tensors"]), inputs["prompts"])
        finally:
            clip_encoder.CLIPVisionTower.forward = tower_forward
        record["input_ids"], record["labels"] = [], []
        for prompt in inputs["prompts"]:
            question = llava_model.format_question(llava_model.default_question_template.format(prompt), "chat")
            answer = llava_model.format_answer(llava_model.default_answer_template.format(prompt), "chat")
            ids = llava_model.tokenizer_image_token(question + answer, scorer.tokenizer)
            n_question = len(llava_model.tokenizer_image_token(question, scorer.tokenizer)) - (question[-1] == " ")
            record["input_ids"].append(ids)
            record["labels"].append(ids[n_question:])  # the tokens the original's loss counts
        results["variants"][name] = record
    torch.save(results, family / "reference.pt")


# -------------------------------------------------------------------------------------------------------- Qwen2.5-VL

QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                "<|video_pad|>"]
# Qwen2.5-VL's chat template as its processor ships it (image and text parts; no video, no tool calls)
QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% for message in messages %}{% if loop.first and message['role'] != "
    "'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] "
    "}}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}{% for content in "
    "message['content'] %}{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}{% set "
    "image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor "
    "%}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_qwen_processor(folder: Path) -> Path:
    """A byte-level BPE tokenizer trained here (Qwen2's pre-tokenisation, its special tokens) and Qwen2.5-VL's image
    processor settings, saved as a ``Qwen2_5_VLProcessor``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast, Qwen2VLImageProcessor
    from transformers.models.qwen2_5_vl import Qwen2_5_VLProcessor

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=QWEN_SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(corpus() * 3, trainer=trainer)
    fast = Qwen2TokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                              unk_token=None, bos_token=None, additional_special_tokens=QWEN_SPECIAL[1:])
    image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=28 * 28 * 1280, patch_size=14,
                                            temporal_patch_size=2, merge_size=2)
    Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=fast, chat_template=QWEN_CHAT_TEMPLATE).save_pretrained(folder)
    return folder


def qwen_reference(out: Path, inputs: dict, qwen2vl_model) -> None:
    """t2v_metrics' ``Qwen2VLModel`` scores the PNGs (its own ``qwen_vl_utils`` + processor + ``generate`` path, under
    ``torch.inference_mode``: no gradient to compare) with its own default templates."""
    from transformers import AutoTokenizer, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    family = out / "qwen2_5_vl"
    folder = write_qwen_processor(family / "qwen2.5-vl-tiny")
    tok = AutoTokenizer.from_pretrained(folder)
    assert len(tok.encode("Yes")) == 1, "the answer must be one token (t2v_metrics scores the first)"
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
    torch.manual_seed(SEED + 30)
    config = Qwen2_5_VLConfig(
        vocab_size=len(tok) + 12, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=4096, rope_theta=10000.0,
        rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}, bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"], image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=[1], in_chans=3),
    )
    model = Qwen2_5_VLForConditionalGeneration(config)
    bf16_exact_(model, head_scale={"lm_head.weight": 10.0})
    model.save_pretrained(folder, safe_serialization=True)

    name = "qwen2.5-vl-tiny"  # the class picks the Qwen2.5 architecture by "qwen2.5" in the name
    qwen2vl_model.QWEN2_VL_MODELS[name] = {"tokenizer": {"path": str(folder)},
                                           "model": {"path": str(folder), "torch_dtype": torch.float32,
                                                     "attn_implementation": "sdpa"}, "fps": 8.0}
    scorer = qwen2vl_model.Qwen2VLModel(name, device="cpu")
    defaults = qwen2vl_model.Qwen2VLModel.forward.__defaults__  # (fps, question_template, answer_template)
    seen = []  # what its generate() feeds the model on the first step: token ids, pixels, grid
    hook = scorer.model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs), with_kwargs=True)
    record = {"png_scores": [], "input_ids": [], "pixel_values": [], "image_grid_thw": [],
              "question_template": defaults[1], "answer_template": defaults[2],
              "answer_id": scorer.processor.tokenizer.encode(defaults[2])[0]}
    for png in inputs["pngs"]:
        row = []
        for prompt in inputs["prompts"]:
            seen.clear()
            row.append(scorer.forward([png], [prompt]).item())
            record["input_ids"].append(seen[0]["input_ids"][0].tolist())
            record["pixel_values"].append(seen[0]["pixel_values"].clone())
            record["image_grid_thw"].append(seen[0]["image_grid_thw"][0].tolist())
        record["png_scores"].append(row)
    hook.remove()
    messages = [{"role": "user", "content": [{"type": "image", "image": inputs["pngs"][0]},
                                             {"type": "text", "text": defaults[1].format(inputs["prompts"][0])}]}]
    record["chat_text"] = scorer.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    torch.save({"variants": {"safetensors": record}}, family / "reference.pt")


def main(out: Path, families: list[str]) -> None:
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    inputs = write_inputs(out / "inputs")
    if "clip_t5" in families or "llava" in families:
        clip_t5_model, llava_model = import_t2v_metrics("clip_t5_model", "llava_model")
        clip_t5_reference(out, inputs, clip_t5_model)
        llava_reference(out, inputs, llava_model, "llava", legacy=False, model_type="llava", seed=SEED + 10)
        llava_reference(out, inputs, llava_model, "sharegpt4v", legacy=True, model_type="share4v", seed=SEED + 20)
    if "qwen" in families:
        (qwen2vl_model,) = import_t2v_metrics("qwen2vl_model")
        qwen_reference(out, inputs, qwen2vl_model)
    (out / f"COMPLETE-{'-'.join(families)}").write_text("ok\n", encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        raise SystemExit(f"usage: {sys.argv[0]} OUT_DIR [clip_t5,llava | qwen]")
    main(Path(sys.argv[1]), sys.argv[2].split(",") if len(sys.argv) == 3 else ["clip_t5", "llava"])
