"""The verifier protocol: images in [0, 1] and their prompts in, one differentiable faithfulness score each out."""

from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image
from torch import Tensor, nn

from ..errors import UserError
from ..images import pil_to_tensor


class Verifier(nn.Module):
    """Base class of every verifier.

    ``forward(images, prompts)`` takes ``images`` of shape ``[B, 3, H, W]`` with values in ``[0, 1]`` (on any device, any
    float dtype) and ``B`` prompts, and returns a float32 tensor ``[B]`` of scores in ``[0, 1]`` on the verifier's device.
    The score is differentiable with respect to ``images``: weights are frozen (``requires_grad_(False)``) but autograd
    stays on, so a caller may back-propagate to the latent that made the image, across devices.
    """

    #: Short name recorded in results (the registry name or the model path).
    name: str = "verifier"

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("_device_probe", torch.empty(0), persistent=False)

    @property
    def device(self) -> torch.device:
        return self._device_probe.device

    def forward(self, images: Tensor, prompts: Sequence[str]) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def check_prompt(self, prompt: str) -> None:
        """Raise :class:`~noise_diffusion.errors.UserError` for a prompt this verifier cannot score; called for every
        job before the first generation. Open-vocabulary verifiers accept every prompt."""

    def freeze(self) -> "Verifier":
        """Freeze all weights and switch to eval mode; autograd through the inputs still works."""
        self.requires_grad_(False)
        self.eval()
        return self

    @torch.no_grad()
    def score_pil(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> Tensor:
        """Score saved images (PIL) without gradients, e.g. to re-score PNGs with a held-out verifier."""
        return self(pil_to_tensor(images), list(prompts)).float().cpu()


def check_prompts(verifier, prompts: Sequence[str]) -> None:
    """Ask the verifier about every prompt before anything is generated (verifiers with a fixed language, such as the
    toy world's, reject others); :class:`UserError` naming the first bad one."""
    check = getattr(verifier, "check_prompt", None)
    if check is None:
        return
    for prompt in dict.fromkeys(prompts):
        try:
            check(prompt)
        except UserError as error:
            raise UserError(f"prompt {prompt!r}: {error}") from None


def resize_center_crop(images: Tensor, size: int, crop: int | None = None, mode: str = "bicubic") -> Tensor:
    """Differentiable version of the usual "resize the shortest side, then centre-crop" preprocessing."""
    crop = size if crop is None else crop
    h, w = images.shape[-2:]
    if min(h, w) != size:
        scale = size / min(h, w)
        new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
        images = nn.functional.interpolate(images, size=(new_h, new_w), mode=mode, align_corners=False, antialias=True)
    h, w = images.shape[-2:]
    top, left = max(0, (h - crop) // 2), max(0, (w - crop) // 2)
    return images[..., top : top + crop, left : left + crop]


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean_t) / std_t
