"""Exact gradients with respect to the initial noise: back-propagation through every denoiser call of the sampler.

The replay (:meth:`DiffusersGenerator.replay`) holds the model's predictions fixed, so its gradient with respect to
``z`` is a rescaled gradient at the final latent. :func:`exact_pass` runs the same guided sampling loop
(:meth:`DiffusersGenerator.denoise` with :meth:`DiffusersGenerator.guided`) under autograd instead, so the final latent
depends on ``z`` through every network call, both halves of classifier-free guidance and the scheduler's own
arithmetic (PNDM's multistep history, Euler's input scaling) included.

Memory: with ``checkpointing`` each step's network call runs under :func:`torch.utils.checkpoint.checkpoint`
(non-reentrant): the forward keeps only that call's input latent (and the scheduler's scalar products), and the backward
recomputes one call's activations at a time. So the pass holds about one step's activations plus one latent per step,
at the price of a second forward of every network call during the backward. Without it every step's activations are
kept until the backward.

The same pass gives the replay gradient for free: the guided predictions are recorded as in sampling, and both
gradients are vector-Jacobian products of the one gradient at the final latent (:meth:`ExactPass.gradients`), so the
decoder and the verifier are differentiated once and the replay needs no model call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint


@dataclass
class ExactPass:
    """One sampling pass under autograd. ``latents`` are the sampler's final latents, differentiable with respect to
    ``z`` through every network call; ``record`` holds the guided predictions (detached) as :meth:`sample` records them.

    ``model_evals`` is the network evaluations per image of the pass (both guidance halves count); ``model_backwards``
    counts those the backward has differentiated so far, per image (it reaches ``model_evals`` after one backward).
    """

    generator: Any
    z: Tensor
    latents: Tensor
    record: list[Tensor]
    model_evals: int
    model_backwards: int = 0
    #: whether each network call was checkpointed
    checkpointed: bool = False

    def gradients(self, grad_latents: Tensor) -> tuple[Tensor, Tensor]:
        """(exact, replay) gradients with respect to ``z`` of a score whose gradient at the final latents is
        ``grad_latents``: the first through every network call (frees the pass's graph), the second through the
        scheduler steps alone with the recorded predictions held fixed."""
        (exact,) = torch.autograd.grad(self.latents, self.z, grad_latents)
        leaf = self.z.detach().requires_grad_(True)
        with torch.enable_grad():
            replayed = self.generator.replay(leaf, self.record)
        (replay,) = torch.autograd.grad(replayed, leaf, grad_latents)
        return exact, replay


def exact_pass(generator, z: Tensor, conditioning, checkpointing: bool | None = None) -> ExactPass:
    """The guided sampling pass from ``z`` under autograd (see the module docstring). ``z`` becomes a leaf that requires
    gradients unless it already does (e.g. a reparametrised noise, to differentiate further back). ``checkpointing``
    ``None``: on when the pass makes more than one network call (a 1-step model would only pay the recomputation)."""
    if not z.requires_grad:
        z = z.detach().requires_grad_(True)
    guided = generator.guided(conditioning)
    evals_per_step = 2 if generator.do_cfg else 1
    if checkpointing is None:
        checkpointing = generator.model_evals_per_generation > evals_per_step
    record: list[Tensor] = []
    result = ExactPass(generator, z, z, record, model_evals=0, checkpointed=bool(checkpointing))

    def counted(grad: Tensor) -> None:  # runs when the backward reaches this step's prediction
        result.model_backwards += evals_per_step

    def predict(model_input: Tensor, t: Tensor, i: int) -> Tensor:
        if checkpointing:
            prediction = checkpoint(guided, model_input, t, i, use_reentrant=False)
        else:
            prediction = guided(model_input, t, i)
        if prediction.requires_grad:
            prediction.register_hook(counted)
        record.append(prediction.detach())
        result.model_evals += evals_per_step
        return prediction

    with torch.enable_grad():
        result.latents = generator.denoise(z, predict)
    return result


@dataclass
class ScoredGradients:
    """What one exact-gradient evaluation gives the search loop, per item of the batch."""

    scores: Tensor  # the objective's scores (detached)
    images: Tensor  # the decoded images (detached)
    exact: Tensor  # d score / d z through every network call
    replay: Tensor  # d score / d z with the predictions held fixed
    exact_pass: ExactPass  # its ``latents`` and ``record`` are the sampler's; its counts are the compute spent


def scored_gradients(generator, z: Tensor, conditioning, objective: Callable[[Tensor], Tensor],
                     checkpointing: bool | None = None) -> ScoredGradients:
    """One sampling pass under autograd, the decode and ``objective(images) -> [B]`` scores, and both gradients of
    the scores with respect to ``z``: the decoder and the objective are differentiated once, at the final latents.
    Items are independent, so the gradient of the sum is each item's own."""
    exact_pass = generator.exact(z, conditioning, checkpointing)
    final = exact_pass.latents.detach().requires_grad_(True)
    with torch.enable_grad():
        images = generator.decode(final)
        scores = objective(images)
    (at_final,) = torch.autograd.grad(scores.sum(), final)
    exact, replay = exact_pass.gradients(at_final)
    return ScoredGradients(scores.detach(), images.detach(), exact, replay, exact_pass)


@dataclass(frozen=True)
class GradientAgreement:
    """How the replay gradient compares with the exact one, per item: their cosine and the ratio of their norms."""

    cosine: list[float]
    norm_ratio: list[float]  # ‖exact‖ / ‖replay‖


def gradient_agreement(exact: Tensor, replay: Tensor) -> GradientAgreement:
    """Per-item cosine and norm ratio of two gradients ``[B, ...]`` (computed in float64)."""
    exact, replay = exact.detach().flatten(1).double(), replay.detach().flatten(1).double()
    cosine = torch.nn.functional.cosine_similarity(exact, replay, dim=1, eps=1e-30)
    ratio = exact.norm(dim=1) / replay.norm(dim=1)
    return GradientAgreement(cosine=cosine.tolist(), norm_ratio=ratio.tolist())
