"""Batched VQAScore: one forward/backward pass for a batch gives the scores and image gradients that scoring each item
alone gives, for every verifier family, with prompts (and answers) of different lengths; the memory options
(micro-batches, activation checkpointing) change neither.

The item-by-item reference runs each image through the verifier on its own (a batch of one: no padding at all); the
single-item scores themselves are checked against the models' own losses in test_vqa_native.py,
test_vqa_clip_t5.py and test_vqa_llava_original.py.
"""

import pytest
import torch

from noise_diffusion.errors import UserError
from noise_diffusion.verifiers import load_verifier
from noise_diffusion.testing import vqa as tv

# token counts differ by a factor of ~10 between the shortest and the longest prompt
PROMPTS = ["a cat", "a red dog sitting on a long wooden bench next to two small birds", "two", "a blue cube"]
BUILDERS = {
    "clip_t5": tv.build_tiny_clip_t5,
    "llava": tv.build_tiny_llava,
    "llava_original": tv.build_tiny_original_llava,
    "qwen": tv.build_tiny_qwen2_5_vl,
    "smolvlm": tv.build_tiny_smolvlm,
    "instructblip": tv.build_tiny_instructblip,
}
#: an answer template holding the prompt: answers of different lengths too (padded in the decoder / at the end)
LONG_ANSWER = "Yes, it shows {prompt}"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("batched")
    return {family: build(root / family) for family, build in BUILDERS.items()}


def sharpen(verifier):
    """Scale the output layer: the tiny encoder-decoders' answer distribution is otherwise nearly uniform, and scores
    that barely depend on the input would hide a misaligned item."""
    with torch.no_grad():
        for module in verifier.modules():
            if hasattr(module, "get_output_embeddings") and module.get_output_embeddings() is not None:
                module.get_output_embeddings().weight.mul_(3.0)
                break
    return verifier


def scores_and_grads(verifier, images, prompts):
    leaf = images.detach().clone().requires_grad_(True)
    scores = verifier(leaf, prompts)
    (grad,) = torch.autograd.grad(scores.sum(), leaf)
    return scores.detach(), grad


def item_by_item(verifier, images, prompts):
    pairs = [scores_and_grads(verifier, images[i : i + 1], [p]) for i, p in enumerate(prompts)]
    return torch.cat([s for s, _ in pairs]), torch.cat([g for _, g in pairs])


def assert_close(actual, expected, rtol=1e-5):
    scores, grads = actual
    ref_scores, ref_grads = expected
    assert torch.isfinite(grads).all()
    assert ((scores - ref_scores).abs() / ref_scores.abs()).max() <= rtol, (scores, ref_scores)
    # the gradient of each image, relative to its own norm
    err = (grads - ref_grads).flatten(1).norm(dim=1) / ref_grads.flatten(1).norm(dim=1)
    assert err.max() <= rtol, err


@pytest.fixture(scope="module")
def verifiers(folders):
    return {family: sharpen(load_verifier(str(folder))) for family, folder in folders.items()}


@pytest.mark.parametrize("family", list(BUILDERS))
@pytest.mark.parametrize("answer", [None, LONG_ANSWER])
def test_batch_equals_item_by_item(folders, family, answer):
    options = {"answer_template": answer} if answer else {}
    verifier = sharpen(load_verifier(str(folders[family]), **options))
    torch.manual_seed(0)
    images = torch.rand(len(PROMPTS), 3, 32, 24)
    expected = item_by_item(verifier, images, PROMPTS)
    # the test can fail: the items' scores differ (by prompt and image) by far more than the tolerance
    assert (expected[0].max() - expected[0].min()) / expected[0].max() > 1e-3
    assert_close(scores_and_grads(verifier, images, PROMPTS), expected)
    # the same item scored in another batch (other neighbours, other padding) keeps its score
    reordered = scores_and_grads(verifier, images.flip(0), PROMPTS[::-1])
    assert_close((reordered[0].flip(0), reordered[1].flip(0)), expected)


@pytest.mark.parametrize("family", list(BUILDERS))
def test_memory_options_change_nothing(verifiers, family):
    verifier = verifiers[family]
    torch.manual_seed(1)
    images = torch.rand(len(PROMPTS), 3, 32, 32)
    expected = scores_and_grads(verifier, images, PROMPTS)
    try:
        verifier.micro_batch = 3  # chunks of 3 and 1
        assert_close(scores_and_grads(verifier, images, PROMPTS), expected)
        with torch.no_grad():  # no gradient wanted: plain chunked forward passes
            assert torch.allclose(verifier(images, PROMPTS), expected[0], rtol=1e-5, atol=0)
        verifier.micro_batch = None
        verifier.set_checkpointing(True)
        assert_close(scores_and_grads(verifier, images, PROMPTS), expected)
        verifier.micro_batch = 2
        assert_close(scores_and_grads(verifier, images, PROMPTS), expected)
    finally:
        verifier.micro_batch = None
        verifier.set_checkpointing(False)


def test_checkpointing_wraps_the_transformer_layers(verifiers):
    """Checkpointing really recomputes the layers in the backward: each layer's forward runs twice per gradient."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    verifier = verifiers["clip_t5"]
    calls = []
    layer = next(m for m in verifier.model.vision_tower.modules() if isinstance(m, GradientCheckpointingLayer))
    child = next(layer.children())  # the recomputation calls the layer's children again (not the layer's hooks)
    handle = child.register_forward_hook(lambda *_: calls.append(1))
    try:
        images = torch.rand(2, 3, 16, 16)
        scores_and_grads(verifier, images, PROMPTS[:2])
        assert len(calls) == 1
        verifier.set_checkpointing(True)
        calls.clear()
        scores_and_grads(verifier, images, PROMPTS[:2])
        assert len(calls) == 2
        calls.clear()
        with torch.no_grad():
            verifier(images, PROMPTS[:2])
        assert len(calls) == 1
    finally:
        verifier.set_checkpointing(False)
        handle.remove()


def test_options_through_the_loader_and_settings(folders):
    verifier = load_verifier(str(folders["llava"]), micro_batch=2, checkpointing=True)
    assert verifier.settings()["micro_batch"] == 2 and verifier.settings()["checkpointing"] is True
    assert load_verifier(str(folders["clip_t5"])).settings()["micro_batch"] is None
    with pytest.raises(UserError, match="micro_batch"):
        load_verifier(str(folders["qwen"]), micro_batch=0)


def test_command_line_flags_reach_the_verifier(folders):
    import argparse

    from noise_diffusion import cli

    parser = argparse.ArgumentParser()
    cli.add_verifier_args(parser)
    assert cli.verifier_spec(parser.parse_args([])).options() == {}
    args = parser.parse_args(["--vqa_micro_batch", "2", "--vqa_checkpointing"])
    options = cli.verifier_spec(args).options()
    assert options == {"micro_batch": 2, "checkpointing": True}
    verifier = load_verifier(str(folders["smolvlm"]), **options)
    assert verifier.micro_batch == 2 and verifier.checkpointing
    with pytest.raises(SystemExit):
        parser.parse_args(["--vqa_micro_batch", "0"])
    help_text = parser.format_help()
    assert "--vqa_micro_batch" in help_text and "--vqa_checkpointing" in help_text


def test_search_with_memory_options_equals_the_default(tiny_sd_dir, folders):
    """Inside the loop (the gradient taken w.r.t. the initial latents, through decode and replay) the memory options
    change neither the scores of any epoch nor the chosen candidates."""
    from noise_diffusion import SearchConfig, optimize
    from noise_diffusion.generators import load_generator

    generator = load_generator(tiny_sd_dir, num_steps=3)
    config = SearchConfig(max_epoch=3, num_candidates=8)
    prompts, seeds = ["a cat", "a red dog sitting on a long wooden bench"], [1, 2]

    def run(**options):
        verifier = sharpen(load_verifier(str(folders["clip_t5"]), **options))
        results = optimize(generator, verifier, prompts, seeds, config, progress=False)
        return [[(r["score"], r.get("candidate")) for r in res.epochs] for res in results]

    plain = run()
    for options in ({"micro_batch": 1}, {"checkpointing": True}):
        other = run(**options)
        for item, ref in zip(other, plain):
            assert [c for _, c in item] == [c for _, c in ref]
            assert [s for s, _ in item] == pytest.approx([s for s, _ in ref], rel=1e-5)
