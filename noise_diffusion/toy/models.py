"""Architectures of the toy world: the tiny Stable-Diffusion components and the two digit classifiers.

The generator parts are the real diffusers/transformers classes (``AutoencoderKL``, ``UNet2DConditionModel``,
``CLIPTextModel`` with a ``CLIPTokenizer``), only small, so the trained folder loads like SD1.4 does.
The verifiers are deliberately different architectures trained on disjoint halves of the digits (the guiding CNN on one
half; the held-out MLP and the held-out residual network on the other), so that the held-out ones are independent
judges of images optimised against the guiding one.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

#: the toy prompts' words, each merged into a single token by the tokenizer's BPE merges
WORDS = ("a", "an", "and", "left", "right", "of", "above", "below") + tuple(str(d) for d in range(10))
MAX_TOKENS = 16
TEXT_HIDDEN = 64
NUM_CLASSES = 11  # ten digits and "no digit" (blank, noise or clutter)


def write_word_tokenizer(folder: str | Path) -> Path:
    """A CLIP tokenizer whose BPE merges turn each toy word into one token (any other text falls back to characters)."""
    from .tokenizer import write_clip_tokenizer

    folder = write_clip_tokenizer(folder, model_max_length=MAX_TOKENS)
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    merges = []
    for word in WORDS:
        if len(word) == 1:
            continue
        piece = word[0]
        for index, char in enumerate(word[1:], start=1):
            last = index == len(word) - 1
            right = char + ("</w>" if last else "")
            merges.append(f"{piece} {right}")
            piece = piece + right
            vocab.setdefault(piece, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n", encoding="utf-8")
    return folder


def text_encoder_config(vocab_size: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=TEXT_HIDDEN, intermediate_size=2 * TEXT_HIDDEN, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=MAX_TOKENS, bos_token_id=512, eos_token_id=513, pad_token_id=513,
    )


def build_vae():
    """32x32x3 -> 8x8x4 (three resolution levels)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 64), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3, norm_num_groups=16,
        sample_size=32,
    )


def build_unet(width: int = 64):
    """An 8x8 latent UNet with cross-attention to the prompt at both resolutions."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(width, 2 * width),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN, attention_head_dim=8, norm_num_groups=32,
    )


class DigitCNN(nn.Module):
    """Guiding verifier: a small CNN classifying one 16x16 box into 10 digits + "no digit"."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, NUM_CLASSES))

    def forward(self, boxes: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(boxes))


class DigitMLP(nn.Module):
    """Held-out verifier: a multilayer perceptron on the box's pixels (no convolutions, no shared weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * 16, 384), nn.GELU(), nn.Linear(384, 192), nn.GELU(), nn.Linear(192, NUM_CLASSES)
        )

    def forward(self, boxes: torch.Tensor) -> torch.Tensor:
        return self.net(boxes)


class DigitResNet(nn.Module):
    """Second held-out verifier: batch-normalised convolutions with a residual block, strided downsampling and global
    average pooling (no max-pooling and no fully connected hidden layer, unlike the guiding CNN)."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()

        def conv(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout))

        self.stem = nn.Sequential(conv(1, width, 5), nn.ReLU(), conv(width, 2 * width, 3, stride=2), nn.ReLU())
        self.block = nn.Sequential(conv(2 * width, 2 * width, 3), nn.ReLU(), conv(2 * width, 2 * width, 3))
        self.down = nn.Sequential(conv(2 * width, 3 * width, 3, stride=2), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3 * width, NUM_CLASSES))

    def forward(self, boxes: torch.Tensor) -> torch.Tensor:
        x = self.stem(boxes)
        x = torch.relu(x + self.block(x))
        return self.head(self.down(x))


VERIFIERS = {"cnn": DigitCNN, "mlp": DigitMLP, "resnet": DigitResNet}
