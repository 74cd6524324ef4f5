"""Conversions between image tensors ``[B, 3, H, W]`` in [0, 1] and PIL images (8 bit)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def pil_to_tensor(images: Sequence[Image.Image]) -> Tensor:
    """Stack PIL images of one size into ``[B, 3, H, W]`` float32 in [0, 1]."""
    arrays = [np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0 for img in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def tensor_to_pil(images: Tensor) -> list[Image.Image]:
    """``[B, 3, H, W]`` (or ``[3, H, W]``) in [0, 1] to PIL images (rounded to 8 bit)."""
    if images.dim() == 3:
        images = images[None]
    arrays = (images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
    return [Image.fromarray(a) for a in arrays]
