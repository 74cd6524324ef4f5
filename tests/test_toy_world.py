"""The shipped toy world: its specification, the trained pipeline and verifiers loaded by name, their behaviour, and
the training script end to end on a tiny budget."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from noise_diffusion import SearchConfig, UserError, load_generator, load_verifier, optimize
from noise_diffusion.toy import PIPELINE, world

ROOT = Path(__file__).resolve().parents[1]


# -- specification -----------------------------------------------------------------------------------------------------
def test_canvas_layout_follows_the_specification():
    images, labels = world.digits()
    assert images.shape[1:] == (16, 16) and 0 <= images.min() and images.max() <= 1
    a, b = images[0], images[1]
    h = world.render("H", a, b, (0, 0, 0, 0))
    assert np.array_equal(h[8:24, 0:16], a) and np.array_equal(h[8:24, 16:32], b)
    assert h[:8].sum() == 0 and h[24:].sum() == 0
    v = world.render("V", a, b, (0, 0, 0, 0))
    assert np.array_equal(v[0:16, 8:24], a) and np.array_equal(v[16:32, 8:24], b)
    blank = np.zeros_like(a)
    shifted = world.render("V", a, blank, (2, -2, 0, 0))  # first digit moved 2 px down and 2 px left
    assert np.array_equal(shifted[2:18, 6:22], a) and shifted.sum() == pytest.approx(a.sum())
    clipped = world.render("H", a, blank, (0, -2, 0, 0))  # pushed over the left edge: cut off
    assert np.array_equal(clipped[8:24, 0:14], a[:, 2:]) and clipped.sum() == pytest.approx(a[:, 2:].sum())
    canvases = world.sample_canvases([("H", 3, 7)] * 4, np.random.default_rng(0))
    assert canvases.shape == (4, 3, 32, 32) and torch.equal(torch.from_numpy(canvases[:, 0]), torch.from_numpy(canvases[:, 2]))


def test_prompts_and_held_out_configurations():
    assert world.parse_prompt("a 3 left of a 7").arrangements() == [("H", 3, 7)]
    assert world.parse_prompt("a 3 right of a 7").arrangements() == [("H", 7, 3)]
    assert world.parse_prompt("a 3 below a 7").arrangements() == [("V", 7, 3)]
    assert len(world.parse_prompt("a 3 and a 7").arrangements()) == 4
    for bad in ("a cat and a dog", "a 3 left of a 3", ""):
        with pytest.raises(UserError):
            world.parse_prompt(bad)
    held = world.held_out_configurations()
    assert len(world.configurations()) == 180 and len(held) == 36  # 20 %
    # held out of training entirely: no training configuration pairs the same two digits
    held_pairs = {frozenset(c[1:]) for c in held}
    assert not any(frozenset(c[1:]) in held_pairs for c in world.training_configurations())
    _, prompts = world.sample_training_set(500, seed=3)
    assert not any(world.is_held_out_prompt(p) for p in prompts)


def test_committed_datasets_match_the_world(tmp_path, capsys):
    assert world.main(["--out", str(tmp_path)]) == 0  # python -m noise_diffusion.toy.world --out DIR
    for name in ("toy_simple.json", "toy_complex.json"):
        assert (ROOT / "datasets" / name).read_text() == (tmp_path / name).read_text()
    assert capsys.readouterr().out.split() == [str(tmp_path / "toy_simple.json"), str(tmp_path / "toy_complex.json")]
    simple = json.loads((ROOT / "datasets" / "toy_simple.json").read_text())
    complex_ = json.loads((ROOT / "datasets" / "toy_complex.json").read_text())
    entries = [e for v in simple.values() for e in v] + complex_
    assert len(complex_) == 360 and len(entries) == 405
    for entry in entries:
        words = entry["prompt"].split()
        parsed = world.parse_prompt(entry["prompt"])
        # indices count tokens after the start token: word i - 1 (0-based)
        assert [words[i - 1] for i in entry["indices"]] == [str(parsed.a), str(parsed.b)]
        assert entry["held_out"] == (frozenset((int(words[1]), int(words[-1]))) in {frozenset(p) for p in world.held_out_pairs()})


def test_the_regeneration_command_writes_where_the_shipped_sets_live(monkeypatch, tmp_path):
    from noise_diffusion import datasets

    written = []
    monkeypatch.setattr(world, "write_datasets", lambda folder: written.append(folder) or [])
    world.main([])
    assert written == [str(datasets.DATASET_DIR)] and datasets.DATASET_DIR == ROOT / "datasets"


# -- the shipped models ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy():
    return load_generator("toy-digits")


@pytest.fixture(scope="module")
def verifiers():
    return load_verifier("toy-digits-cnn"), load_verifier("toy-digits-heldout"), load_verifier("toy-digits-heldout-resnet")


def test_shipped_pipeline_loads_by_name_offline(toy):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    assert toy.settings()["num_steps"] == 25 and toy.settings()["guidance_scale"] == 5.0  # from noise_diffusion.json
    assert toy.latent_shape == (4, 8, 8) and (toy.height, toy.width) == (32, 32)
    pipe = StableDiffusionPipeline.from_pretrained(PIPELINE, safety_checker=None, requires_safety_checker=False)
    assert isinstance(pipe.scheduler, DDIMScheduler) and not pipe.scheduler.config.clip_sample
    assert (pipe.scheduler.config.beta_start, pipe.scheduler.config.beta_end) == (0.00085, 0.012)
    assert all(len(pipe.tokenizer.tokenize(w)) == 1 for w in "a 3 left right of above below and".split())
    size = sum(f.stat().st_size for f in PIPELINE.parent.rglob("*")
               if f.is_file() and "toy-digits-attn" not in f.parts)  # the attention world is counted in its own test
    assert size <= 10 * 2**20


def test_score_is_the_probability_of_the_implied_boxes(verifiers):
    guide = verifiers[0]
    canvas = torch.from_numpy(world.sample_canvases([("H", 3, 7)], np.random.default_rng(1)))
    grey = canvas[:, :1]
    probs = [guide.classifier(grey[..., r : r + 16, c : c + 16]).softmax(-1)[0] for r, c in
             (world.BOXES["H"][0], world.BOXES["H"][1], world.BOXES["V"][0], world.BOXES["V"][1])]
    expected_left = probs[0][3] * probs[1][7]
    expected_and = max(expected_left, probs[0][7] * probs[1][3], probs[2][3] * probs[3][7], probs[2][7] * probs[3][3])
    scores = guide(canvas.repeat(3, 1, 1, 1), ["a 3 left of a 7", "a 7 right of a 3", "a 3 and a 7"])
    assert scores[0].item() == pytest.approx(expected_left.item(), rel=1e-5)
    assert scores[1].item() == pytest.approx(expected_left.item(), rel=1e-5)
    assert scores[2].item() == pytest.approx(expected_and.item(), rel=1e-5)
    image = canvas.clone().requires_grad_(True)
    guide(image, ["a 3 left of a 7"]).sum().backward()
    assert image.grad.abs().sum() > 0


def test_verifiers_separate_faithful_from_unfaithful_canvases(verifiers):
    rng = np.random.default_rng(7)
    prompts, good, bad = [], [], []
    for _ in range(60):
        a, b = rng.choice(10, size=2, replace=False)
        relation = world.RELATIONS[rng.integers(5)]
        prompt = world.make_prompt(int(a), relation, int(b))
        options = world.parse_prompt(prompt).arrangements()
        layout, first, second = options[rng.integers(len(options))]
        prompts.append(prompt)
        good.append((layout, first, second))
        wrong = int(rng.choice([d for d in range(10) if d not in (a, b)]))
        # unfaithful: the order swapped (spatial relations), or one digit replaced by another
        bad.append((layout, second, first) if relation != "and" and rng.random() < 0.5 else (layout, first, wrong))
    faithful = torch.from_numpy(world.sample_canvases(good, rng))
    unfaithful = torch.from_numpy(world.sample_canvases(bad, rng))
    for verifier in verifiers:
        with torch.no_grad():
            s_good, s_bad = verifier(faithful, prompts), verifier(unfaithful, prompts)
        assert (s_good > 0.5).float().mean() >= 0.9, verifier.name
        assert (s_bad < 0.5).float().mean() >= 0.95, verifier.name
        assert verifier.is_faithful(faithful, prompts).float().mean() >= 0.9
        assert not verifier.is_faithful(unfaithful, prompts).any() or verifier.is_faithful(unfaithful, prompts).float().mean() <= 0.05


def test_noise_diffusion_raises_the_held_out_score_on_held_out_prompts(toy, verifiers):
    guide, judge = verifiers[:2]
    prompts = [p for p in (world.make_prompt(a, r, b) for r in world.RELATIONS for a in range(10) for b in range(10)
                           if a != b) if world.is_held_out_prompt(p)][::17][:4]
    seeds = [0] * len(prompts)
    plain = optimize(toy, guide, prompts, seeds, SearchConfig(method="none"), progress=False)
    nd = optimize(toy, guide, prompts, seeds, SearchConfig(method="noise_diffusion", max_epoch=6, num_candidates=50),
                  progress=False)
    with torch.no_grad():
        before = judge(torch.stack([r.best_image for r in plain]), prompts).mean().item()
        after = judge(torch.stack([r.best_image for r in nd]), prompts).mean().item()
    assert [r.initial_score for r in nd] == pytest.approx([r.initial_score for r in plain], abs=1e-5)
    assert after > before + 0.1


def test_second_held_out_judge_ships_small_and_is_another_architecture(verifiers):
    from safetensors import safe_open

    from noise_diffusion.toy.verifiers import WEIGHTS
    from noise_diffusion.toy.models import DigitResNet

    judge = verifiers[2]
    assert isinstance(judge.classifier, DigitResNet) and not judge.classifier.training
    path = WEIGHTS / "toy-digits-heldout-resnet.safetensors"
    assert path.stat().st_size < 3 * 2**20
    with safe_open(str(path), "pt") as weights:  # batch-norm statistics were trained, not left at their defaults
        assert not torch.allclose(weights.get_tensor("stem.0.1.running_var"), torch.ones(32))
    canvas = torch.from_numpy(world.sample_canvases([("V", 4, 9)], np.random.default_rng(3))).requires_grad_(True)
    score = judge(canvas, ["a 4 above a 9"])
    assert 0.5 < score.item() <= 1.0
    score.sum().backward()
    assert canvas.grad.abs().sum() > 0
    with pytest.raises(UserError):
        load_verifier("toy-digits-heldout-resnet", question="x")


def test_augmentation_moves_and_softens_boxes_within_range():
    from noise_diffusion.toy.training import digits as train

    rng = np.random.default_rng(0)
    boxes, _ = train.box_batch(64, "b", rng)
    moved = train.augment_boxes(boxes, rng)
    assert moved.shape == boxes.shape and moved.min() >= 0 and moved.max() <= 1
    assert (moved - boxes).abs().mean() > 0.01  # every batch is changed ...
    assert (moved.mean() - boxes.mean()).abs() < 0.1 * boxes.mean()  # ... without losing the digits' ink


# -- training ----------------------------------------------------------------------------------------------------------
def test_training_script_runs_end_to_end(tmp_path):
    from noise_diffusion.toy.training import digits as train

    train.main(["--work", str(tmp_path), "--verifier_steps", "2", "--vae_steps", "2", "--unet_steps", "2",
                "--unet_more_steps", "2", "--unet_dataset", "32", "--unet_batch", "4"])
    timings = json.loads((tmp_path / "timings.json").read_text())
    assert set(timings) == {*train.VERIFIER_RECIPES, "vae", "unet_text_encoder", "unet_text_encoder_stage2"}
    assert timings["toy-digits-heldout-resnet"]["augment"] and timings["toy-digits-heldout-resnet"]["half"] == "b"
    generator = load_generator(str(tmp_path / "toy-digits-stage2"))
    assert generator.settings()["num_steps"] == train.SAMPLING["num_steps"]
    verifier_weights = tmp_path / "toy-digits-cnn.safetensors"
    assert verifier_weights.is_file()
    with torch.no_grad():
        z = torch.randn(1, *generator.latent_shape)
        image = generator.decode(generator.sample(z, generator.encode_prompts(["a 1 above a 2"])).latents)
    assert image.shape == (1, 3, 32, 32) and torch.isfinite(image).all()


def test_verifiers_reject_prompts_and_options_outside_the_world(verifiers):
    guide = verifiers[0]
    with pytest.raises(UserError, match="not a toy-world prompt"):
        guide(torch.zeros(1, 3, 32, 32), ["a cat and a dog"])
    with pytest.raises(UserError, match="takes no options"):
        load_verifier("toy-digits-cnn", question="Is it {prompt}?")
