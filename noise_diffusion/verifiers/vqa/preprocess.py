"""Differentiable image preprocessing in torch, mirroring the transformers image processors' configurations.

The processors work on PIL/numpy images and cut the gradient; these functions take ``[B, 3, H, W]`` float images in
[0, 1] and reproduce the processors' resize / crop / pad / normalise steps with torch operations.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import torch
from torch import Tensor, nn

from ..base import normalize, resize_center_crop

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def read_json(name_or_path: str, filename: str) -> dict:
    """``filename`` from a local folder or a Hub repo; {} when the file does not exist."""
    if os.path.isdir(name_or_path):
        path = os.path.join(name_or_path, filename)
        if not os.path.isfile(path):
            return {}
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        try:
            path = hf_hub_download(name_or_path, filename)
        except EntryNotFoundError:
            return {}
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def pad_to_square(images: Tensor, fill: Sequence[float]) -> Tensor:
    """Pad the short side to a square, image centred, padding of colour ``fill`` (in [0, 1]).

    As LLaVA's ``expand2square`` (used by CLIP-FlanT5 and LLaVA-1.5 in VQAScore): the image is pasted at offset
    ``(long - short) // 2``.
    """
    b, c, h, w = images.shape
    if h == w:
        return images
    side = max(h, w)
    canvas = torch.tensor(fill, dtype=images.dtype, device=images.device).view(1, c, 1, 1).expand(b, c, side, side)
    top, left = (side - h) // 2, (side - w) // 2
    # F.pad keeps the gradient of the pasted image; the padding itself is constant
    padded = nn.functional.pad(images, (left, side - w - left, top, side - h - top))
    mask = nn.functional.pad(torch.ones_like(images[:, :1]), (left, side - w - left, top, side - h - top))
    return padded + (1 - mask) * canvas


def mean_colour(mean: Sequence[float]) -> list[float]:
    """The padding colour of ``expand2square``: ``int(m * 255)`` per channel, back in [0, 1]."""
    return [int(m * 255) / 255 for m in mean]


def resize(images: Tensor, height: int, width: int, antialias: bool = True) -> Tensor:
    """Bicubic resize to exactly (height, width). ``antialias``: as the processors' PIL resize (antialiased, and
    clipped to [0, 1] as PIL's 8-bit output is: bicubic overshoots on sharp edges); otherwise plain bicubic
    interpolation of a float tensor, unclipped, as torchvision 0.16's tensor ``Resize`` computes it."""
    if tuple(images.shape[-2:]) == (height, width):
        return images
    out = nn.functional.interpolate(images, size=(height, width), mode="bicubic", align_corners=False,
                                    antialias=antialias)
    return out.clamp(0.0, 1.0) if antialias else out


def shortest_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """torchvision's ``Resize(size)`` output size: the short side becomes ``size``, the long side is scaled and
    truncated."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def center_crop(images: Tensor, crop: int) -> Tensor:
    h, w = images.shape[-2:]
    top, left = max(0, (h - crop) // 2), max(0, (w - crop) // 2)
    return images[..., top : top + crop, left : left + crop]


def clip_pixels(images: Tensor, size: int, crop: int, mean: Sequence[float], std: Sequence[float],
                pad: bool = False, antialias: bool = True) -> Tensor:
    """``CLIPImageProcessor`` in torch: (optional square padding), bicubic shortest-side resize, centre crop, normalise.

    ``antialias=False`` resizes as the Noise Diffusion authors' in-loop preprocessing (torchvision 0.16's tensor
    ``Resize(size, BICUBIC)``, which does not antialias float tensors, nor clip them) before the same crop."""
    if pad:
        images = pad_to_square(images, mean_colour(mean))
    if not antialias:
        if min(images.shape[-2:]) != size:
            images = resize(images, *shortest_side_size(*images.shape[-2:], size), antialias=False)
        images = center_crop(images, crop)
    elif min(images.shape[-2:]) != size:
        images = resize_center_crop(images, size, crop).clamp(0.0, 1.0)  # clipped as PIL's 8-bit output
    else:
        images = resize_center_crop(images, size, crop)
    return normalize(images, mean, std)


def clip_processor_settings(config: dict, default_size: int) -> dict:
    """Size/crop/mean/std from a ``CLIPImageProcessor``-style ``preprocessor_config.json`` (with defaults)."""
    size = config.get("size", {})
    size = size.get("shortest_edge", size.get("height", default_size)) if isinstance(size, dict) else (size or default_size)
    crop = config.get("crop_size", {})
    crop = crop.get("height", size) if isinstance(crop, dict) else (crop or size)
    if not config.get("do_center_crop", True):
        crop = size
    return {
        "size": int(size), "crop": int(crop),
        "mean": list(config.get("image_mean", CLIP_MEAN)), "std": list(config.get("image_std", CLIP_STD)),
    }
