"""The toy world's verifiers (``toy-digits-cnn`` guides; ``toy-digits-heldout`` and ``toy-digits-heldout-resnet`` only
judge).

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

from ..errors import UserError
from ..verifiers.base import Verifier
from ..verifiers.registry import register_verifier
from . import models, world

WEIGHTS = Path(__file__).resolve().parent / "assets" / "verifiers"
#: short name -> architecture in toy.models.VERIFIERS (weights: WEIGHTS/<name>.safetensors); the held-out ones saw the
#: other half of the digits (recipes in toy.training.digits.VERIFIER_RECIPES)
VERIFIERS = {"toy-digits-cnn": "cnn", "toy-digits-heldout": "mlp", "toy-digits-heldout-resnet": "resnet"}
#: the attention world ``toy-digits-attn`` has the same canvas and language, so its guide and judges are these
#: verifiers under its own names (same weights)
SHARED = {f"toy-digits-attn-{name[len('toy-digits-'):]}": name for name in VERIFIERS}
#: the four box positions in a fixed order: (layout, slot)
_BOXES = [("H", 0), ("H", 1), ("V", 0), ("V", 1)]


class ToyDigitVerifier(Verifier):
    """A digit classifier applied to the boxes that the prompt's relation implies."""

    def __init__(self, classifier: torch.nn.Module, name: str) -> None:
        super().__init__()
        self.classifier = classifier
        self.name = name
        self.freeze()

    @classmethod
    def load(cls, name: str, device="cpu", dtype: torch.dtype = torch.float32) -> "ToyDigitVerifier":
        from safetensors.torch import load_file

        weights = SHARED.get(name, name)
        path = WEIGHTS / f"{weights}.safetensors"
        if not path.is_file():
            raise OSError(f"missing weights {path}")
        net = models.VERIFIERS[VERIFIERS[weights]]()
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

    @staticmethod
    def check_prompt(prompt: str) -> None:
        """:class:`UserError` for a prompt outside the toy world's language (checked before anything is generated)."""
        world.parse_prompt(prompt)

    def forward(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        parsed = [world.parse_prompt(p) for p in prompts]  # UserError for a prompt outside the world
        probs = self.box_probabilities(images)
        scores = []
        for i, item in enumerate(parsed):
            per_arrangement = [
                probs[i, _base(layout), first] * probs[i, _base(layout) + 1, second]
                for layout, first, second in item.arrangements()
            ]
            scores.append(torch.stack(per_arrangement).max())
        return torch.stack(scores).float()

    @torch.no_grad()
    def is_faithful(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """Hard decision ``[B]`` bool: in some true configuration both boxes' most likely classes are the right digits."""
        probs = self.box_probabilities(images)
        predicted = probs.argmax(-1)
        out = []
        for i, prompt in enumerate(prompts):
            ok = False
            for layout, first, second in world.parse_prompt(prompt).arrangements():
                base = _base(layout)
                ok |= bool(predicted[i, base] == first) and bool(predicted[i, base + 1] == second)
            out.append(ok)
        return torch.tensor(out)


def _base(layout: str) -> int:
    """Index of the layout's first box in :data:`_BOXES` (its second box follows)."""
    return 0 if layout == "H" else 2


@register_verifier({name: name for name in [*VERIFIERS, *SHARED]})
def load_toy_verifier(name: str, device="cpu", dtype: torch.dtype = torch.float32, **options) -> ToyDigitVerifier:
    given = sorted(k for k, v in options.items() if v is not None)
    if given:  # e.g. a VQA question: these verifiers read the prompt's digits and relation directly
        raise UserError(f"verifier {name!r} takes no options (got {', '.join(given)})")
    return ToyDigitVerifier.load(name, device=device, dtype=dtype)
