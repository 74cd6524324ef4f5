"""VQAScore (Lin et al., "Evaluating Text-to-Visual Generation with Image-to-Text Generation", ECCV 2024).

The score of an image for a prompt is the probability a vision-language model gives to the answer "Yes" when asked
``Does this figure show "{prompt}"? Please answer yes or no.``: exp(mean log-probability of the answer tokens). Noise
Diffusion (Miao et al., CVPR 2025) uses it as the verifier whose gradient w.r.t. the image guides the search.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ...errors import UserError
from ..base import Scorer

DEFAULT_QUESTION = 'Does this figure show "{prompt}"? Please answer yes or no.'
DEFAULT_ANSWER = "Yes"
#: how images are resized to the verifier's input: "antialias" (default; as the PIL image processors, so the score is
#: the image's VQAScore) or "authors" (bicubic without antialiasing, as the Noise Diffusion authors' in-loop
#: torchvision 0.16 tensor ``Resize(336)``)
RESIZE_MODES = ("antialias", "authors")


def take_resize_option(options: dict) -> str:
    """Remove and check the loaders' ``resize`` option (one of :data:`RESIZE_MODES`)."""
    mode = options.pop("resize", None) or "antialias"
    if mode not in RESIZE_MODES:
        raise UserError(f"resize {mode!r} is not one of {', '.join(RESIZE_MODES)}")
    return mode


def check_template(template: str, what: str) -> str:
    """Fail early on a template that ``format`` cannot fill (``{prompt}`` or ``{}`` stand for the prompt)."""
    try:
        template.format("x", prompt="x")
    except (IndexError, KeyError, ValueError) as error:
        raise UserError(f"bad {what} template {template!r}: use {{prompt}} for the prompt ({error})") from error
    return template


def check_options(options: dict, allowed: set[str], what: str) -> None:
    """Unknown loader options are user errors (e.g. a CLIPScore option given to a VQA verifier)."""
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise UserError(f"{what} takes no option {', '.join(unknown)} (options: {', '.join(sorted(allowed))})")


def fill(template: str, prompt: str) -> str:
    return template.format(prompt, prompt=prompt)


def mean_answer_logprob(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean log-probability of ``targets`` [T] under ``logits`` [T, V] (row t predicts targets[t]); float32 math."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return log_probs.gather(-1, targets[:, None].to(logits.device)).squeeze(-1).mean()


class VQAScorer(Scorer):
    """Base of the VQAScore verifiers: subclasses implement :meth:`answer_logprob` for one image.

    ``forward`` moves the images to the scorer's device as float32 in [0, 1] (the preprocessing casts to the model's
    dtype afterwards), scores the items one at a time (prompts differ in length; no padding subtleties) and returns
    exp(mean log p(answer)) as float32.
    """

    #: one of :data:`RESIZE_MODES`; the loaders set it from their ``resize`` option
    resize_mode = "antialias"

    def __init__(self, question_template: str | None = None, answer_template: str | None = None) -> None:
        super().__init__()
        self.question_template = check_template(question_template or DEFAULT_QUESTION, "question")
        self.answer_template = check_template(answer_template or DEFAULT_ANSWER, "answer")

    def answer_logprob(self, image: Tensor, question: str, answer: str) -> Tensor:
        """Mean log-probability of ``answer``'s tokens given ``image`` [1, 3, H, W] in [0, 1] and ``question``."""
        raise NotImplementedError

    def forward(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise UserError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        if len(prompts) != images.shape[0]:
            raise UserError(f"{images.shape[0]} images but {len(prompts)} prompts")
        images = images.to(self.device, torch.float32)
        logps = [
            self.answer_logprob(images[i : i + 1], fill(self.question_template, p), fill(self.answer_template, p))
            for i, p in enumerate(prompts)
        ]
        return torch.stack(logps).float().exp()

    def settings(self) -> dict:
        return {"question_template": self.question_template, "answer_template": self.answer_template,
                "resize": self.resize_mode}

    @property
    def antialias(self) -> bool:
        return self.resize_mode == "antialias"
