"""The verifiers' two resize modes, each against a computation that does not use torch's interpolation:
``antialias`` against PIL's bicubic resize of float ('F' mode) images, ``authors`` (torchvision 0.16's tensor
``Resize(336, BICUBIC)``, no antialiasing) against bicubic convolution written out in numpy."""

import numpy as np
import pytest
import torch
from PIL import Image

import run as run_cli
from noise_diffusion import cli
from noise_diffusion.errors import UserError
from noise_diffusion.verifiers import load_verifier
from noise_diffusion.verifiers.vqa.preprocess import CLIP_MEAN, CLIP_STD, clip_pixels, resize
from noise_diffusion.testing.vqa import build_tiny_clip_t5, build_tiny_smolvlm


def cubic_weights(t: float, a: float = -0.75) -> list[float]:
    """Keys' cubic convolution weights of the 4 taps at offsets -1, 0, 1, 2 for a sample at fraction ``t``."""

    def k(x: float) -> float:
        x = abs(x)
        if x <= 1:
            return (a + 2) * x**3 - (a + 3) * x**2 + 1
        if x < 2:
            return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
        return 0.0

    return [k(t + 1), k(t), k(1 - t), k(2 - t)]


def bicubic_1d(signal: np.ndarray, out_size: int) -> np.ndarray:
    """Plain (not antialiased) bicubic interpolation along the last axis: half-pixel sample centres, 4 taps of Keys'
    kernel with a = -0.75, edge samples repeated beyond the border."""
    n = signal.shape[-1]
    scale = n / out_size
    out = np.zeros(signal.shape[:-1] + (out_size,))
    for j in range(out_size):
        x = (j + 0.5) * scale - 0.5
        left = int(np.floor(x))
        for tap, weight in zip(range(left - 1, left + 3), cubic_weights(x - left)):
            out[..., j] += weight * signal[..., min(max(tap, 0), n - 1)]
    return out


def bicubic_2d(image: np.ndarray, height: int, width: int) -> np.ndarray:
    rows = bicubic_1d(image, width)  # [..., H, width]
    return np.swapaxes(bicubic_1d(np.swapaxes(rows, -1, -2), height), -1, -2)


def smooth_images(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Smooth images within [0.1, 0.9] (no bicubic overshoot past [0, 1], so clipping plays no part)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    out = np.empty((b, 3, h, w))
    for i in range(b):
        for c in range(3):
            f, p = rng.uniform(0.5, 3, size=2), rng.uniform(0, 6, size=2)
            out[i, c] = 0.5 + 0.2 * np.sin(2 * np.pi * f[0] * x + p[0]) + 0.2 * np.cos(2 * np.pi * f[1] * y + p[1])
    return torch.from_numpy(out).float()


@pytest.mark.parametrize("size", [(9, 7), (20, 31), (45, 60)], ids=["down", "mixed", "up"])
def test_authors_resize_is_plain_bicubic(size):
    images = torch.rand(2, 3, 24, 30, generator=torch.Generator().manual_seed(1))  # sharp: overshoot is kept
    ours = resize(images, *size, antialias=False)
    expected = torch.from_numpy(bicubic_2d(images.double().numpy(), *size)).float()
    assert torch.allclose(ours, expected, atol=1e-5), (ours - expected).abs().max()
    assert ours.min() < 0 or ours.max() > 1  # not clipped: torchvision 0.16 leaves float tensors as they are


@pytest.mark.parametrize("size", [(12, 10), (20, 31)], ids=["down", "mixed"])
def test_antialias_resize_is_pils_bicubic(size):
    images = smooth_images(1, 36, 40, seed=2)
    ours = resize(images, *size)
    channels = [np.asarray(Image.fromarray(images[0, c].numpy(), mode="F").resize(size[::-1], Image.BICUBIC))
                for c in range(3)]
    expected = torch.from_numpy(np.stack(channels))[None]
    assert torch.allclose(ours, expected, atol=1e-4), (ours - expected).abs().max()
    assert not torch.allclose(ours, resize(images, *size, antialias=False), atol=1e-3)  # the modes differ


def test_authors_clip_pixels_resizes_the_short_side_then_crops():
    """Non-square input: short side 30 -> 16, long side int(16 * 40 / 30) = 21 (torchvision truncates), centre crop."""
    images = smooth_images(1, 30, 40, seed=3)
    ours = clip_pixels(images, 16, 16, CLIP_MEAN, CLIP_STD, antialias=False)
    resized = bicubic_2d(images.double().numpy(), 16, 21)[..., :, 2:18]
    mean, std = np.array(CLIP_MEAN).reshape(1, 3, 1, 1), np.array(CLIP_STD).reshape(1, 3, 1, 1)
    expected = torch.from_numpy((resized - mean) / std).float()
    assert torch.allclose(ours, expected, atol=1e-4), (ours - expected).abs().max()


@pytest.fixture(scope="module")
def clip_t5_dir(tmp_path_factory):
    return build_tiny_clip_t5(tmp_path_factory.mktemp("clip_t5_resize"))


def test_verifier_option_selects_the_mode(clip_t5_dir):
    antialias, authors = load_verifier(str(clip_t5_dir)), load_verifier(str(clip_t5_dir), resize="authors")
    assert antialias.settings()["resize"] == "antialias" and authors.settings()["resize"] == "authors"
    big = smooth_images(1, 48, 48, seed=4)  # the tower takes 16 px
    mean, std = np.array(CLIP_MEAN).reshape(1, 3, 1, 1), np.array(CLIP_STD).reshape(1, 3, 1, 1)
    expected = torch.from_numpy((bicubic_2d(big.double().numpy(), 16, 16) - mean) / std).float()
    assert torch.allclose(authors.preprocess(big), expected, atol=1e-4)
    assert not torch.allclose(antialias.preprocess(big), expected, atol=1e-2)
    assert not torch.allclose(authors(big, ["a cat"]), antialias(big, ["a cat"]))
    native = smooth_images(1, 16, 16, seed=5)  # no resize: the modes agree
    assert torch.equal(authors(native, ["a cat"]), antialias(native, ["a cat"]))
    with pytest.raises(UserError, match="resize 'nearest'"):
        load_verifier(str(clip_t5_dir), resize="nearest")


def test_other_families_take_the_option(tmp_path):
    folder = build_tiny_smolvlm(tmp_path / "smolvlm")
    authors = load_verifier(str(folder), resize="authors")
    big = smooth_images(1, 40, 40, seed=6)
    mean, std = np.array([0.5] * 3).reshape(1, 3, 1, 1), np.array([0.5] * 3).reshape(1, 3, 1, 1)
    expected = torch.from_numpy((bicubic_2d(big.double().numpy(), 16, 16) - mean) / std).float()
    assert torch.allclose(authors.preprocess(big), expected, atol=1e-4)


def test_cli_flag_reaches_the_verifier_options(tiny_clip_dir):
    args = run_cli.parse_args(["--prompt", "a cat", "--vqa_resize", "authors"])
    assert cli.verifier_spec(args).options() == {"resize": "authors"}
    assert "resize" not in cli.verifier_spec(run_cli.parse_args(["--prompt", "a cat"])).options()  # verifiers' own default
    with pytest.raises(UserError, match="resize"):  # CLIPScore has no such option: one-line error
        load_verifier(tiny_clip_dir, resize="authors")


def test_help_explains_the_flag(capsys):
    with pytest.raises(SystemExit):
        run_cli.parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--vqa_resize {antialias,authors}" in out and "torchvision 0.16" in out
