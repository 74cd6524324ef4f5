"""Small verifiers with known, informative gradients, for tests of the loop and the generators."""

from typing import Sequence

import torch
from torch import Tensor

from noise_diffusion.verifiers.base import Verifier


class RednessVerifier(Verifier):
    """Score = sigmoid((r − center) / scale) with r = mean red − mean of green and blue: an informative gradient.

    ``calibrate`` sets center and scale to the mean and standard deviation of r over some images, so that scores
    spread over (0, 1) whatever the (random) model's colour offset.
    """

    name = "redness"

    def __init__(self, center: float = 0.0, scale: float = 0.05) -> None:
        super().__init__()
        self.center, self.scale = center, scale

    @staticmethod
    def raw(images: Tensor) -> Tensor:
        images = images.float()
        return images[:, 0].mean(dim=(1, 2)) - images[:, 1:].mean(dim=(1, 2, 3))

    def calibrate(self, images: Tensor) -> "RednessVerifier":
        raw = self.raw(images.detach())
        self.center, self.scale = float(raw.mean()), float(raw.std().clamp_min(1e-6))
        return self

    def forward(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        return torch.sigmoid((self.raw(images.to(self.device)) - self.center) / self.scale)


def calibrated_redness(generator, prompt: str = "a red apple") -> RednessVerifier:
    """Redness calibrated on the images of 16 other seeds (100 to 115) for ``prompt``, so that scores spread over
    (0, 1)."""
    from noise_diffusion.generators.base import initial_latents

    z = initial_latents(generator.latent_shape, range(100, 116))
    images = generator.decode(generator.sample(z, generator.encode_prompts([prompt] * 16)).latents)
    return RednessVerifier().calibrate(images)
