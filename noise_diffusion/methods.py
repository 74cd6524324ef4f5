"""How each search method proposes the next initial latents from the current ones.

Every method is one function ``propose(z, grad, scores, rngs, options, states) -> (z_next, infos)`` over a batch
``z`` of shape ``[B, *S]``: ``grad`` is ∂score/∂z (``None`` for methods that do not need it), ``scores`` the current
scores ``[B]``, ``rngs`` one ``torch.Generator`` per item (so an item's randomness does not depend on its batch-mates),
``states`` one object per item that the method keeps across epochs (made once by its ``new_state`` from the item's
initial latent; ``None`` for methods without one), and ``infos`` one dict per item for the epoch record. ``z_next`` is
``[B, *S]``, or ``[B, K, *S]`` for a method that scores K candidates per item (``candidates``): the loop then keeps
each item's best-scoring one. The loop in :mod:`noise_diffusion.optimize` is the same for all.

- ``noise_diffusion`` — the paper: γ = 1 − sqrt(s), the best of N candidate noises by gradient alignment, then
  ``z ← sqrt(1−γ)·z + sqrt(γ)·σ*``.
- ``random_diffusion`` — the paper's ablation: the same step with a random candidate instead of the selected one.
- ``best_of_n`` — every epoch a fresh independent initial noise (random search); with ``max_epoch`` epochs it makes the
  same number of full generations as Noise Diffusion.
- ``gradient_ascent`` — plain normalised gradient ascent on z (the paper's PGD comparison):
  ``z ← z + η·sqrt(D)·g/‖g‖``, η = ``step_size`` (a step of η times the typical norm sqrt(D) of a standard-normal z).
  It leaves the Gaussian prior, which is the paper's point.
- ``zero_order`` — zero-order search (Ma et al. 2025): N neighbours of the pivot at a fixed cosine, the pivot moves to
  the best one when it scores higher (:mod:`noise_diffusion.noise_search`). An epoch costs N generations.
- ``reno`` — ReNO (Eyring et al. 2024): SGD with Nesterov momentum on ``−score`` plus a norm regulariser, the gradient
  clipped, every step accepted; the exact gradient by default.
- ``mean_variance`` — the paper's mean–variance ablation: InitNO's ``z' = z·exp(½·log σ²) + μ`` with Adam on (μ, log σ²)
  raising the score, and InitNO's KL rule.
- ``none`` — the plain sampler: no epochs (``max_epoch`` is ignored).
- ``initno``, ``initno_noise_only``, ``attend_and_excite`` — the attention baselines of
  :mod:`noise_diffusion.baselines`: one image per (prompt, seed) from their own sampler, no epochs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from . import noise_search
from .update import batched_alignments, diffuse, gamma_from_score

Propose = Callable[[Tensor, "Tensor | None", Tensor, Sequence[torch.Generator], dict, Sequence[Any]],
                   "tuple[Tensor, list[dict]]"]


@dataclass(frozen=True)
class Method:
    name: str
    propose: Propose | None  # None: no epochs after the initial one
    needs_grad: bool
    description: str
    baseline: bool = False  # made by noise_diffusion.baselines (its own sampler), not by the epoch loop
    new_state: Callable[[Tensor], Any] | None = None  # the per-item state kept across epochs, from the initial latent
    candidates: bool = False  # propose returns [B, K, *S]: K candidates per item, the best-scoring one kept
    accept: str | None = None  # the method's own acceptance rule (overrides SearchConfig.accept)
    default_gradient: str = "replay"  # the gradient it uses unless SearchConfig.gradient says otherwise
    default_candidates: int = 50  # candidates per epoch unless SearchConfig.num_candidates says otherwise


def draw_pools(rngs: Sequence[torch.Generator], num: int, shape: Sequence[int], device, dtype=torch.float32) -> Tensor:
    """``[B, num, *shape]`` standard-normal candidates, item i drawn from ``rngs[i]`` on ``device``."""
    return torch.stack([torch.randn((num, *shape), generator=rng, device=device, dtype=dtype) for rng in rngs])


#: Most bytes of candidate noise held at once per item. A larger pool is drawn and searched in chunks of whole
#: candidates (the same for every batch size), so memory stays bounded whatever the number of candidates; pools that
#: fit (1024 candidates of an SD1.x latent) are drawn in one piece.
POOL_CHUNK_BYTES = 64 * 2**20


def pool_chunk(num: int, shape: Sequence[int]) -> int:
    """How many candidates :func:`noise_diffusion_step` draws at once per item."""
    per_candidate = 4 * max(1, int(torch.Size(shape).numel()))
    return max(1, min(num, POOL_CHUNK_BYTES // per_candidate))


def noise_diffusion_step(z: Tensor, grad: Tensor | None, scores: Tensor, rngs, options: dict, states=None):
    """The paper's update with gradient-selected candidate noise (one vectorised pass for the whole batch)."""
    gamma = gamma_from_score(scores).to(z.device)
    num = options["num_candidates"]
    chunk = pool_chunk(num, z.shape[1:])
    rows = torch.arange(z.shape[0], device=z.device)
    best = best_align = chosen = None
    for start in range(0, num, chunk):
        pool = draw_pools(rngs, min(chunk, num - start), z.shape[1:], z.device, z.dtype)
        align = batched_alignments(z, grad, pool, gamma)  # [B, n]
        index = align.argmax(dim=1)
        value, candidate = align[rows, index], pool[rows, index]
        if best is None:
            best, best_align, chosen = index, value, candidate
        else:  # strictly better only, so that ties keep the first candidate as one argmax over the whole pool does
            better = value > best_align
            best = torch.where(better, index + start, best)
            best_align = torch.where(better, value, best_align)
            chosen = torch.where(better.view(-1, *([1] * (z.dim() - 1))), candidate, chosen)
    z_next = diffuse(z, chosen, gamma)
    gamma_l, best_l, align_l = gamma.tolist(), best.tolist(), best_align.tolist()  # one host sync
    infos = [{"gamma": g, "candidate": c, "alignment": a} for g, c, a in zip(gamma_l, best_l, align_l)]
    return z_next, infos


def random_diffusion_step(z: Tensor, grad: Tensor | None, scores: Tensor, rngs, options: dict, states=None):
    """The same update with a random candidate: a uniformly chosen member of an i.i.d. Gaussian pool is itself just a
    Gaussian draw, so one noise per item is drawn instead of N."""
    gamma = gamma_from_score(scores).to(z.device)
    noise = draw_pools(rngs, 1, z.shape[1:], z.device, z.dtype)[:, 0]
    infos = [{"gamma": g} for g in gamma.tolist()]
    return diffuse(z, noise, gamma), infos


def best_of_n_step(z: Tensor, grad: Tensor | None, scores: Tensor, rngs, options: dict, states=None):
    """A fresh, independent initial noise per item (random search)."""
    return draw_pools(rngs, 1, z.shape[1:], z.device, z.dtype)[:, 0], [{} for _ in range(z.shape[0])]


def gradient_ascent_step(z: Tensor, grad: Tensor | None, scores: Tensor, rngs, options: dict, states=None):
    """z ← z + η·sqrt(D)·g/‖g‖ per item."""
    flat = grad.reshape(grad.shape[0], -1).float()
    norms = flat.norm(dim=1).clamp_min(1e-12)
    dim = flat.shape[1]
    step = options["step_size"] * dim**0.5 / norms
    z_next = z + (step.view(-1, *([1] * (z.dim() - 1))) * grad.float()).to(z.dtype)
    return z_next, [{"gradient_norm": n} for n in norms.tolist()]


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("noise_diffusion", noise_diffusion_step, True, "the paper: gradient-selected noise diffusion"),
        Method("random_diffusion", random_diffusion_step, False, "ablation: noise diffusion with a random candidate"),
        Method("best_of_n", best_of_n_step, False, "random search over max_epoch+1 independent initial noises"),
        Method("gradient_ascent", gradient_ascent_step, True, "normalised gradient ascent on z_T (PGD comparison)"),
        Method("zero_order", noise_search.zero_order_step, False, "zero-order search (Ma et al. 2025): the "
               "pivot moves to the best of N neighbours at a fixed cosine when it scores higher; an epoch is N "
               "generations", candidates=True, accept="improved",
               default_candidates=noise_search.ZERO_ORDER_NEIGHBOURS),
        Method("reno", noise_search.reno_step, True, "ReNO (Eyring et al. 2024): SGD with Nesterov momentum on "
               "-score plus a norm regulariser, gradient clipping, exact gradient by default",
               new_state=noise_search.new_momentum_state, accept="always", default_gradient="exact"),
        Method("mean_variance", noise_search.mean_variance_step, True, "the paper's mean-variance ablation: "
               "InitNO's z' = z*exp(logvar/2) + mu, Adam on (mu, logvar) raising the score, InitNO's KL rule",
               new_state=noise_search.new_mean_variance_state, accept="always"),
        Method("none", None, False, "the plain sampler, one generation"),
        Method("initno", None, False, "InitNO: initial-noise optimisation, then its attention guidance while "
               "denoising (as the paper ran it)", baseline=True),
        Method("initno_noise_only", None, False, "InitNO ablation: the optimised noise, sampled without guidance",
               baseline=True),
        Method("attend_and_excite", None, False, "Attend-and-Excite: cross-attention guidance in the first 25 steps",
               baseline=True),
    )
}
