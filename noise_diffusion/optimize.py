"""The Noise Diffusion epoch loop (and, with another ``method``, its baselines), for one latent or a batch.

Epoch 0 generates and scores the initial latent. Each later epoch proposes new latents from the current ones (the
method's ``propose``, see :mod:`noise_diffusion.methods`), generates, and scores them. The update is always accepted
(as the authors do) or, with ``accept="improved"``, reverted when the score does not rise. The best image seen so far
is kept with its latent and epoch.

A batch of B items (prompts and seeds) is optimised at once; every item has its own random generators, γ, candidate
selection, best image and early stop, so an item's result does not depend on what it is batched with.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .errors import UserError
from .generators.base import Generator, initial_latents
from .generators.exact import gradient_agreement, scored_gradients
from .methods import METHODS
from .records import MAX_SEED, RunRecord, check_seed
from .search_config import ACCEPT_RULES, SearchConfig  # noqa: F401 (re-exported: the loop's settings)
from .search_state import ItemProgress, SearchState
from .verifiers.base import Verifier, check_prompts

#: Offset between an item's seed and the seed of its candidate-noise generator, so that the pools are not the same
#: stream as the initial latent (which is drawn on the CPU from the seed itself).
POOL_SEED_OFFSET = 1_000_003


def pool_seed(seed: int) -> int:
    """The seed of an item's candidate-noise generator (wrapping round at 2**64, the generators' seed range)."""
    return (seed + POOL_SEED_OFFSET) % (MAX_SEED + 1)


def optimize(
    generator: Generator,
    verifier: Verifier,
    prompts: Sequence[str],
    seeds: Sequence[int],
    config: SearchConfig | None = None,
    *,
    initial: Tensor | None = None,
    progress: bool = True,
    on_epoch: Callable | None = None,
    token_indices: Sequence | None = None,
) -> list[RunRecord]:
    """Optimise the initial latents of ``len(prompts)`` items at once; returns one :class:`RunRecord` per item, with
    its tensors in ``images`` (its ``generator`` and ``verifier`` specs are the caller's to add).

    ``initial`` overrides the seeded initial latents (``[B, *generator.latent_shape]``, standard normal).
    ``on_epoch(item, epoch, image, record)`` is called after every scored latent (``record``: its
    :class:`~noise_diffusion.records.EpochRecord`), e.g. to save per-epoch images.
    ``token_indices`` (one list per prompt, or None to compute them) are the subject tokens of the attention
    baselines (:mod:`noise_diffusion.baselines`), which the other methods ignore.
    An item whose score is not finite stops there with :attr:`RunRecord.failure` set; the others go on.
    """
    config = (config or SearchConfig()).validate()
    prompts, seeds = list(prompts), [check_seed(int(s)) for s in seeds]
    if len(prompts) != len(seeds) or not prompts:
        raise UserError("give one seed per prompt, and at least one prompt")
    if any(not prompt.strip() for prompt in prompts):
        raise UserError("the prompt is empty")
    check_prompts(verifier, prompts)
    if METHODS[config.method].baseline:
        from .baselines import run_baseline

        found = run_baseline(config.method, generator, verifier, prompts, seeds, token_indices, initial=initial,
                             progress=progress, on_epoch=on_epoch)
        return [item.record(config) for item in found]
    return _search(generator, verifier, prompts, seeds, config, initial, progress, on_epoch)


def _search(generator, verifier, prompts, seeds, config, initial, progress, on_epoch) -> list[RunRecord]:
    """The epoch loop of the methods that propose latents."""
    method, device, started = METHODS[config.method], generator.device, time.perf_counter()
    options = {"num_candidates": config.candidates, "step_size": config.step_size,
               "neighbour_cosine": config.neighbour_cosine}
    z = initial_latents(generator.latent_shape, seeds) if initial is None else initial.detach().float().cpu()
    rngs = [torch.Generator(device=device).manual_seed(pool_seed(s)) for s in seeds]
    state = SearchState([ItemProgress(p, s) for p, s in zip(prompts, seeds)], config, on_epoch,
                        active=list(range(len(prompts))))
    # what each item's method keeps across epochs, made once from its initial latent
    kept = [method.new_state(row) if method.new_state else None for row in z.to(device)]
    score = _scorer(generator, verifier, prompts, state, config.gradient_used)
    epochs = config.epochs
    bar = tqdm(range(epochs + 1), disable=not progress or epochs == 0, desc=config.method, leave=False)
    for epoch in bar:
        if not state.active:
            break
        tick = time.perf_counter()
        if epoch == 0:
            scored, infos = z.to(device), [{} for _ in state.active]
        else:
            z_now, grad_now, scores_now = state.current()
            scored, infos = method.propose(z_now, grad_now, scores_now, [rngs[i] for i in state.active], options,
                                           [kept[i] for i in state.active])
        if method.candidates and epoch > 0:
            scored, scores, images, grad = _best_candidate(score, scored, infos)
        else:
            scores, images, grad = score(scored, method.needs_grad and epoch < epochs, infos)
        if config.accept_rule == "improved" and epoch > 0:
            accepted = scores > state.current()[2]
        else:
            accepted = torch.ones_like(scores, dtype=torch.bool)
        seconds = (time.perf_counter() - tick) / len(state.active)
        state.record_epoch(epoch, scored, scores, images, grad, infos, accepted, seconds)
        _show(bar, state.items)
    bar.close()
    return state.records(time.perf_counter() - started)


def _best_candidate(score: Callable, candidates: Tensor, infos: list[dict]):
    """Score the K candidates ``[B, K, *S]`` of every item (one batch of B per candidate, so memory is that of one
    generation per item) and keep each item's best (the first on a tie); its index goes into ``infos``."""
    best_z = best_scores = best_images = best_index = None
    for k in range(candidates.shape[1]):
        scores, images, _ = score(candidates[:, k], False, None)
        if best_scores is None:
            best_z, best_scores, best_images = candidates[:, 0], scores, images
            best_index = torch.zeros_like(scores, dtype=torch.long)
            continue
        better = scores > best_scores
        best_index = torch.where(better, k, best_index)
        best_scores = torch.where(better, scores, best_scores)
        best_z = torch.where(_rows(better, best_z), candidates[:, k], best_z)
        best_images = torch.where(_rows(better.to(images.device), images), images, best_images)
    for info, index in zip(infos, best_index.tolist()):
        info["candidate"] = index
    return best_z, best_scores, best_images, None


def _rows(mask: Tensor, like: Tensor) -> Tensor:
    return mask.view(-1, *([1] * (like.dim() - 1)))


def _scorer(generator, verifier, prompts, state: SearchState, gradient: str | None) -> Callable:
    """``score(z, need_grad, infos)``: generate and score the active items (the gradient w.r.t. z when asked, the
    replay one or the exact one as ``gradient`` says), counting their compute. With the exact gradient the cosine
    and norm ratio of the exact and the replay gradient go into ``infos``."""
    conditioning = generator.encode_prompts(prompts)
    evals_per_generation = generator.model_evals_per_generation

    def score(z: Tensor, need_grad: bool, infos: list[dict] | None):
        active = state.active
        item_prompts = [prompts[i] for i in active]
        grad, evals, backwards = None, evals_per_generation, 0
        if need_grad and gradient == "exact":
            found = scored_gradients(generator, z, conditioning.select(active), lambda x: verifier(x, item_prompts))
            scores, images, grad = found.scores, found.images, found.exact
            evals, backwards = found.exact_pass.model_evals, found.exact_pass.model_backwards
            agreement = gradient_agreement(found.exact, found.replay)
            for info, cosine, ratio in zip(infos, agreement.cosine, agreement.norm_ratio):
                info.update(gradient_cosine=cosine, gradient_norm_ratio=ratio)
        elif need_grad:
            sampled = generator.sample(z, conditioning.select(active))
            leaf = z.detach().requires_grad_(True)
            images = generator.decode(generator.replay(leaf, sampled.record))
            scores = verifier(images, item_prompts)
            # items are independent, so the gradient of the sum is each item's own gradient
            (grad,) = torch.autograd.grad(scores.sum(), leaf)
        else:
            sampled = generator.sample(z, conditioning.select(active))
            with torch.no_grad():
                images = generator.decode(sampled.latents)
                scores = verifier(images, item_prompts)
        for i in active:
            compute = state.items[i].compute
            compute["generations"] += 1
            compute["model_evals"] += evals
            compute["model_backwards"] += backwards
            compute["verifier_forward"] += 1
            compute["verifier_backward"] += int(need_grad)
        return scores.detach().float().to(generator.device), images.detach(), grad

    return score


def _show(bar, items) -> None:
    current = sum(item.epochs[-1]["score"] for item in items) / len(items)
    best = sum(item.best_score for item in items) / len(items)
    bar.set_postfix(score=f"{current:.3f}", best=f"{best:.3f}")
