"""The toy world's two verifiers (``toy-digits-cnn`` guides, ``toy-digits-heldout`` only judges).

Score = probability that the image shows the prompt: for each configuration that makes the prompt true (one for a
spatial relation, four for ``and``), the product of the classifier's probabilities of the two required digits in the
two nominal 16x16 boxes; the score is the best configuration's. It is differentiable in the pixels (crops, softmax,
product, max), so Noise Diffusion's gradient ascent step (paper, Eq. 10-11) can use it like a VQA score.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from ..toy import models, world
from . import SCORERS
from .base import Scorer

WEIGHTS = Path(__file__).resolve().parent.parent / "toy" / "assets" / "verifiers"
#: short name -> (architecture in toy.models.VERIFIERS, weights file); the held-out one saw the other half of the digits
VERIFIERS = {"toy-digits-cnn": "cnn", "toy-digits-heldout": "mlp"}
#: the four box positions in a fixed order: (layout, slot)
_BOXES = [("H", 0), ("H", 1), ("V", 0), ("V", 1)]


class ToyDigitScorer(Scorer):
    """A digit classifier applied to the boxes that the prompt's relation implies."""

    def __init__(self, classifier: torch.nn.Module, name: str) -> None:
        super().__init__()
        self.classifier = classifier
        self.name = name
        self.freeze()

    @classmethod
    def load(cls, name: str, device="cpu", dtype: torch.dtype = torch.float32) -> "ToyDigitScorer":
        from safetensors.torch import load_file

        path = WEIGHTS / f"{name}.safetensors"
        if not path.is_file():
            raise OSError(f"missing weights {path}")
        net = models.VERIFIERS[VERIFIERS[name]]()
        net.load_state_dict(load_file(str(path)))
        return cls(net, name).to(device=device, dtype=dtype)

    def box_probabilities(self, images: Tensor) -> Tensor:
        """Class probabilities ``[B, 4, 11]`` of the boxes H-first, H-second, V-first, V-second."""
        weight = next(self.classifier.parameters())
        images = images.to(device=weight.device, dtype=weight.dtype)
        if images.shape[-2:] != (world.CANVAS, world.CANVAS):
            images = F.interpolate(images, size=(world.CANVAS, world.CANVAS), mode="bilinear", antialias=True)
        grey = images.mean(dim=1, keepdim=True)
        crops = [grey[..., r : r + world.DIGIT, c : c + world.DIGIT] for r, c in (world.BOXES[l][s] for l, s in _BOXES)]
        logits = self.classifier(torch.stack(crops, dim=1).flatten(0, 1))
        return logits.float().softmax(-1).view(len(images), len(_BOXES), -1)

    def arrangement_scores(self, images: Tensor, prompts: Sequence[str]) -> tuple[Tensor, list[list[tuple]]]:
        probs = self.box_probabilities(images)
        parsed = [world.parse_prompt(p) for p in prompts]
        scores, arrangements = [], []
        for i, item in enumerate(parsed):
            options = item.arrangements()
            arrangements.append(options)
            per = []
            for layout, first, second in options:
                base = 0 if layout == "H" else 2
                per.append(probs[i, base, first] * probs[i, base + 1, second])
            scores.append(torch.stack(per))
        return scores, arrangements

    def forward(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        scores, _ = self.arrangement_scores(images, prompts)
        return torch.stack([s.max() for s in scores]).float()

    @torch.no_grad()
    def is_faithful(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """Hard decision ``[B]`` bool: in some true configuration both boxes' most likely classes are the right digits."""
        probs = self.box_probabilities(images)
        predicted = probs.argmax(-1)
        out = []
        for i, prompt in enumerate(prompts):
            ok = False
            for layout, first, second in world.parse_prompt(prompt).arrangements():
                base = 0 if layout == "H" else 2
                ok |= bool(predicted[i, base] == first) and bool(predicted[i, base + 1] == second)
            out.append(ok)
        return torch.tensor(out)


def _loader(name: str):
    return lambda device="cpu", dtype=torch.float32, **options: ToyDigitScorer.load(name, device=device, dtype=dtype)


for _name in VERIFIERS:
    SCORERS[_name] = _loader(_name)
