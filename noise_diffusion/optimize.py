"""The Noise Diffusion epoch loop (and, with another ``method``, its baselines), for one latent or a batch.

Epoch 0 generates and scores the initial latent. Each later epoch proposes new latents from the current ones (the
method's ``propose``, see :mod:`noise_diffusion.methods`), generates, and scores them. The update is always accepted
(as the authors do) or, with ``accept="improved"``, reverted when the score does not rise. The best image seen so far
is kept with its latent and epoch.

A batch of B items (prompts and seeds) is optimised at once; every item has its own random generators, γ, candidate
selection, best image and early stop, so an item's result does not depend on what it is batched with.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .errors import UserError
from .generators.base import Generator, initial_latents
from .methods import METHODS
from .results import RunResult  # noqa: F401 (re-exported: the loop returns them)
from .results import MAX_SEED, check_seed
from .verifiers.base import Verifier, check_prompts

ACCEPT_RULES = ("always", "improved")

#: Offset between an item's seed and the seed of its candidate-noise generator, so that the pools are not the same
#: stream as the initial latent (which is drawn on the CPU from the seed itself).
POOL_SEED_OFFSET = 1_000_003


def pool_seed(seed: int) -> int:
    """The seed of an item's candidate-noise generator (wrapping round at 2**64, the generators' seed range)."""
    return (seed + POOL_SEED_OFFSET) % (MAX_SEED + 1)


@dataclass
class SearchConfig:
    """Settings of the search (the generator and the verifier carry their own)."""

    method: str = "noise_diffusion"
    max_epoch: int = 50
    num_candidates: int = 50
    accept: str = "always"
    target_score: float | None = None
    step_size: float = 0.1  # gradient_ascent only
    keep_epoch_images: bool = False

    def validate(self) -> "SearchConfig":
        if self.method not in METHODS:
            raise UserError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.max_epoch < 0:
            raise UserError(f"max_epoch must be >= 0, got {self.max_epoch}")
        if self.num_candidates < 1:
            raise UserError(f"num_candidates must be >= 1, got {self.num_candidates}")
        if self.accept not in ACCEPT_RULES:
            raise UserError(f"accept must be one of {', '.join(ACCEPT_RULES)}, got {self.accept!r}")
        if self.target_score is not None and not 0.0 <= self.target_score <= 1.0:  # NaN fails too
            raise UserError(f"target_score must lie in [0, 1], got {self.target_score}")
        if not (math.isfinite(self.step_size) and self.step_size > 0):
            raise UserError(f"step_size must be a finite number > 0, got {self.step_size}")
        return self

    @property
    def epochs(self) -> int:
        return 0 if METHODS[self.method].propose is None else self.max_epoch


def optimize(
    generator: Generator,
    verifier: Verifier,
    prompts: Sequence[str],
    seeds: Sequence[int],
    config: SearchConfig | None = None,
    *,
    initial: Tensor | None = None,
    progress: bool = True,
    on_epoch: Callable[[int, int, Tensor, dict], None] | None = None,
    token_indices: Sequence | None = None,
) -> list[RunResult]:
    """Optimise the initial latents of ``len(prompts)`` items at once; returns one :class:`RunResult` per item.

    ``initial`` overrides the seeded initial latents (``[B, *generator.latent_shape]``, standard normal).
    ``on_epoch(item, epoch, image, record)`` is called after every scored latent (e.g. to save per-epoch images).
    ``token_indices`` (one list per prompt, or None to compute them) are the subject tokens of the attention
    baselines (:mod:`noise_diffusion.baselines`), which the other methods ignore.
    An item whose score is not finite stops there with :attr:`RunResult.failure` set; the others go on.
    """
    config = (config or SearchConfig()).validate()
    prompts, seeds = list(prompts), [check_seed(int(s)) for s in seeds]
    if len(prompts) != len(seeds) or not prompts:
        raise UserError("give one seed per prompt, and at least one prompt")
    if any(not prompt.strip() for prompt in prompts):
        raise UserError("the prompt is empty")
    check_prompts(verifier, prompts)
    method = METHODS[config.method]
    if method.baseline:
        from .baselines import run_baseline

        return run_baseline(config.method, generator, verifier, prompts, seeds, token_indices, initial=initial,
                            progress=progress, on_epoch=on_epoch)
    device = generator.device
    options = {"num_candidates": config.num_candidates, "step_size": config.step_size}
    batch = len(prompts)

    z = initial_latents(generator.latent_shape, seeds) if initial is None else initial.detach().float().cpu()
    z = z.to(device)
    rngs = [torch.Generator(device=device).manual_seed(pool_seed(s)) for s in seeds]
    conditioning = generator.encode_prompts(prompts)
    evals_per_generation = generator.model_evals_per_generation
    # model_backwards stays 0: the replay differentiates the scheduler steps and the VAE, never the denoiser
    compute = [dict(generations=0, model_evals=0, model_backwards=0, verifier_forward=0, verifier_backward=0)
               for _ in prompts]
    results: list[RunResult | None] = [None] * batch
    epochs = config.epochs
    started = time.perf_counter()

    def evaluate(active: list[int], z_active: Tensor, need_grad: bool):
        """Generate and score the active items; the gradient w.r.t. z when asked."""
        sampled = generator.sample(z_active, conditioning.select(active))
        item_prompts = [prompts[i] for i in active]
        grad = None
        if need_grad:
            leaf = z_active.detach().requires_grad_(True)
            images = generator.decode(generator.replay(leaf, sampled.record))
            scores = verifier(images, item_prompts)
            # items are independent, so the gradient of the sum is each item's own gradient
            (grad,) = torch.autograd.grad(scores.sum(), leaf)
        else:
            with torch.no_grad():
                images = generator.decode(sampled.latents)
                scores = verifier(images, item_prompts)
        for i in active:
            compute[i]["generations"] += 1
            compute[i]["model_evals"] += evals_per_generation
            compute[i]["verifier_forward"] += 1
            compute[i]["verifier_backward"] += int(need_grad)
        return scores.detach().float().to(device), images.detach(), grad

    def need_grad_after(epoch: int) -> bool:
        return method.needs_grad and epoch < epochs

    active = list(range(batch))
    tick = time.perf_counter()
    scores, images, grad = evaluate(active, z, need_grad_after(0))
    seconds = (time.perf_counter() - tick) / batch
    host_scores, bad_grads = scores.tolist(), _bad_gradients(grad, batch)
    for i in range(batch):
        image = images[i].float().cpu()
        record = {"epoch": 0, "score": host_scores[i], "accepted": True, "seconds": seconds}
        results[i] = RunResult(
            prompts[i], seeds[i], image, host_scores[i], image, z[i].float().cpu(), host_scores[i], 0, [record]
        )
        if not math.isfinite(host_scores[i]) or bad_grads[i]:
            results[i].failure = _non_finite(host_scores[i], 0, bad_grads[i])
            continue
        if config.keep_epoch_images:
            results[i].epoch_images.append(image)
        if on_epoch:
            on_epoch(i, 0, image, record)
    current_z, current_scores, current_grad = z, scores, grad

    def finished(i: int) -> bool:
        if results[i].failure:
            return True
        return config.target_score is not None and results[i].best_score >= config.target_score

    active = [i for i in range(batch) if not finished(i)]
    bar = tqdm(range(1, epochs + 1), disable=not progress or epochs == 0, desc="noise diffusion", leave=False)
    _show(bar, results)
    for epoch in bar:
        if not active:
            break
        tick = time.perf_counter()
        idx = torch.tensor(active, device=device)
        z_now = current_z[idx]
        grad_now = current_grad[idx] if current_grad is not None else None
        z_next, infos = method.propose(z_now, grad_now, current_scores[idx], [rngs[i] for i in active], options)
        scores, images, grad = evaluate(active, z_next, need_grad_after(epoch))
        if config.accept == "improved":
            accepted = scores > current_scores[idx]
        else:
            accepted = torch.ones_like(scores, dtype=torch.bool)
        # merge: accepted items move, rejected ones keep their latent, score and gradient
        current_z = current_z.clone()
        current_scores = current_scores.clone()
        current_z[idx[accepted]] = z_next[accepted]
        current_scores[idx[accepted]] = scores[accepted]
        if grad is not None:
            if current_grad is None:
                current_grad = torch.zeros_like(current_z)
            current_grad = current_grad.clone()
            current_grad[idx[accepted]] = grad[accepted]
        seconds = (time.perf_counter() - tick) / len(active)
        host_scores, host_accepted = scores.tolist(), accepted.tolist()
        bad_grads = _bad_gradients(grad, len(active))
        for j, i in enumerate(active):
            record = {"epoch": epoch, "score": host_scores[j], **infos[j], "accepted": host_accepted[j], "seconds": seconds}
            result = results[i]
            result.epochs.append(record)
            if not math.isfinite(host_scores[j]) or bad_grads[j]:
                result.failure = _non_finite(host_scores[j], epoch, bad_grads[j])
                continue
            image = images[j].float().cpu()
            if host_scores[j] > result.best_score:
                result.best_score, result.best_epoch = host_scores[j], epoch
                result.best_image, result.best_latent = image, z_next[j].float().cpu()
            if config.keep_epoch_images:
                result.epoch_images.append(image)
            if on_epoch:
                on_epoch(i, epoch, image, record)
        active = [i for i in active if not finished(i)]
        _show(bar, results)
    bar.close()

    total = time.perf_counter() - started
    for i, result in enumerate(results):
        result.compute = compute[i]
        result.seconds = total / batch
    return results


def _bad_gradients(grad: Tensor | None, count: int) -> list[bool]:
    """Per item: does its gradient hold a NaN or an infinity (which would poison the next latent)?"""
    if grad is None:
        return [False] * count
    return (~torch.isfinite(grad).reshape(grad.shape[0], -1).all(dim=1)).tolist()


def _non_finite(score: float, epoch: int, bad_gradient: bool = False) -> str:
    if bad_gradient and math.isfinite(score):
        return f"the gradient of the score is not finite at epoch {epoch}"
    return f"the verifier's score is {score} at epoch {epoch}"


def _show(bar, results) -> None:
    current = sum(r.epochs[-1]["score"] for r in results) / len(results)
    best = sum(r.best_score for r in results) / len(results)
    bar.set_postfix(score=f"{current:.3f}", best=f"{best:.3f}")
