"""VQAScore (Lin et al., "Evaluating Text-to-Visual Generation with Image-to-Text Generation", ECCV 2024).

The score of an image for a prompt is the probability a vision-language model gives to the answer "Yes" when asked
``Does this figure show "{prompt}"? Please answer yes or no.``: exp(mean log-probability of the answer tokens). Noise
Diffusion (Miao et al., CVPR 2025) uses it as the verifier whose gradient w.r.t. the image guides the search.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ...errors import UserError
from ..base import Verifier

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


#: options every VQA verifier takes (how it computes, not what it scores): see :class:`VQAVerifier`
VERIFIER_OPTIONS = ("micro_batch", "checkpointing")


def check_options(options: dict, allowed: set[str], what: str) -> None:
    """Unknown loader options are user errors (e.g. a CLIPScore option given to a VQA verifier)."""
    allowed = set(allowed) | set(VERIFIER_OPTIONS)
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise UserError(f"{what} takes no option {', '.join(unknown)} (options: {', '.join(sorted(allowed))})")


def fill(template: str, prompt: str) -> str:
    return template.format(prompt, prompt=prompt)


def mean_answer_logprob(logits: Tensor, targets: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean log-probability of ``targets`` [B, T] under ``logits`` [B, T, V] (row t predicts targets[:, t]) over the
    positions where ``mask`` [B, T] is true (all when None): one value per item, float32 math."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    picked = log_probs.gather(-1, targets[..., None].to(logits.device)).squeeze(-1)
    if mask is None:
        return picked.mean(-1)
    mask = mask.to(picked.device, torch.bool)
    return torch.where(mask, picked, 0.0).sum(-1) / mask.sum(-1)


def pad_sequences(sequences: Sequence[Sequence[int]], pad_id: int, side: str = "right") -> tuple[Tensor, Tensor]:
    """Token id lists of different lengths as one ``[B, L]`` tensor and its attention mask (1 = token, 0 = padding).

    Encoders (T5, the Q-Former) and decoder inputs take right padding: the real tokens keep positions 0..n-1 and a
    causal decoder never looks past them. Decoder-only prompts take left padding, so that every item's answer ends at
    the last position (one slice of the logits serves the batch); their position ids must then skip the padding."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        where = slice(length - len(seq), length) if side == "left" else slice(0, len(seq))
        ids[row, where] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, where] = 1
    return ids, mask


def positions_from_mask(mask: Tensor) -> Tensor:
    """Position ids that count only the real tokens (0 at the first one), as an unpadded sequence would have them."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def check_micro_batch(micro_batch: int | None) -> int | None:
    if micro_batch is not None and (isinstance(micro_batch, bool) or not isinstance(micro_batch, int) or micro_batch < 1):
        raise UserError(f"micro_batch must be a positive integer or None, got {micro_batch!r}")
    return micro_batch


def _checkpointed(forward):
    """``forward`` under activation checkpointing (when a backward can follow): only the layer's inputs are kept, the
    layer is recomputed in the backward. Non-reentrant, so that keyword arguments and eval mode work as they are."""
    from torch.utils.checkpoint import checkpoint

    def run(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    run.checkpointed = True
    return run


def set_checkpointing(module: nn.Module, enabled: bool) -> int:
    """Turn activation checkpointing of every transformer layer in ``module`` on or off; returns the number of layers.

    transformers' own switch (``gradient_checkpointing_enable``) only acts in training mode, and a verifier stays in
    eval mode (dropout off), so each layer's ``forward`` is wrapped here instead; the results are unchanged."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in module.modules() if isinstance(m, GradientCheckpointingLayer)]
    for layer in layers:
        wrapped = getattr(layer.__dict__.get("forward"), "checkpointed", False)
        if enabled and not wrapped:
            layer.forward = _checkpointed(layer.forward)
        elif not enabled and wrapped:
            del layer.forward
    return len(layers)


class VQAVerifier(Verifier):
    """Base of the VQAScore verifiers: subclasses implement :meth:`answer_logprobs` for a batch.

    ``forward`` moves the images to the verifier's device as float32 in [0, 1] (the preprocessing casts to the model's
    dtype afterwards), scores the whole batch in one forward pass (prompts of different lengths padded, with attention
    masks) and returns exp(mean log p(answer)) as float32.

    Memory options of the backward pass (neither changes the scores or gradients beyond float rounding):

    - ``micro_batch``: run the verifier on at most this many images at a time. With a gradient to compute, each
      micro-batch's forward *and* backward run inside ``forward`` and only its image gradients are kept, so the
      verifier's activations are held for one micro-batch at a time (the scores' gradient w.r.t. an image depends on
      that image alone, so nothing is lost; first-order gradients only). Without a gradient to compute it is a plain
      chunked forward. Default: the whole batch at once.
    - ``checkpointing``: activation checkpointing in every transformer layer of the vision tower and the language
      model: the layers are recomputed in the backward (about one more forward pass) and only their inputs are kept.
    """

    #: one of :data:`RESIZE_MODES`; the loaders set it from their ``resize`` option
    resize_mode = "antialias"

    def __init__(self, question_template: str | None = None, answer_template: str | None = None,
                 micro_batch: int | None = None) -> None:
        super().__init__()
        self.question_template = check_template(question_template or DEFAULT_QUESTION, "question")
        self.answer_template = check_template(answer_template or DEFAULT_ANSWER, "answer")
        self.micro_batch = check_micro_batch(micro_batch)
        self.checkpointing = False  # subclasses call set_checkpointing once their model is in place

    def set_checkpointing(self, enabled: bool) -> None:
        """Activation checkpointing in the model's transformer layers on or off (the ``checkpointing`` option)."""
        if set_checkpointing(self, enabled) == 0 and enabled:
            raise UserError(f"{self.name}: the model has no layers that support checkpointing")
        self.checkpointing = bool(enabled)

    def answer_logprobs(self, images: Tensor, questions: Sequence[str], answers: Sequence[str]) -> Tensor:
        """Mean log-probability [B] of each ``answers[i]``'s tokens given ``images[i]`` ([B, 3, H, W] in [0, 1]) and
        ``questions[i]``, in one batched pass."""
        raise NotImplementedError

    def forward(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise UserError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        if len(prompts) != images.shape[0]:
            raise UserError(f"{images.shape[0]} images but {len(prompts)} prompts")
        images = images.to(self.device, torch.float32)
        questions = [fill(self.question_template, p) for p in prompts]
        answers = [fill(self.answer_template, p) for p in prompts]
        step = self.micro_batch or len(prompts)
        if step >= len(prompts):
            return self.answer_logprobs(images, questions, answers).float().exp()
        chunks = [slice(i, i + step) for i in range(0, len(prompts), step)]
        if not (torch.is_grad_enabled() and images.requires_grad):
            return torch.cat([self.answer_logprobs(images[c], questions[c], answers[c]).float() for c in chunks]).exp()
        scores, grads = [], []
        for c in chunks:  # forward and backward of one micro-batch; its activations are freed before the next
            leaf = images[c].detach().requires_grad_(True)
            with torch.enable_grad():
                chunk_scores = self.answer_logprobs(leaf, questions[c], answers[c]).float().exp()
                (grad,) = torch.autograd.grad(chunk_scores.sum(), leaf)
            scores.append(chunk_scores.detach())
            grads.append(grad)
        scores_t, grads_t = torch.cat(scores), torch.cat(grads)
        # value: the scores (the added term is exactly 0); gradient w.r.t. images: the per-item gradients just computed
        return scores_t + ((images - images.detach()) * grads_t).flatten(1).sum(1)

    def settings(self) -> dict:
        return {"question_template": self.question_template, "answer_template": self.answer_template,
                "micro_batch": self.micro_batch, "checkpointing": self.checkpointing, "resize": self.resize_mode}

    @property
    def antialias(self) -> bool:
        return self.resize_mode == "antialias"
