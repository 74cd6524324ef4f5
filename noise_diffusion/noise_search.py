"""The other noise-search methods of the field, as tensor functions: zero-order search (Ma et al. 2025), ReNO
(Eyring et al. 2024) and the mean–variance reparametrisation of InitNO (Guo et al. 2024) guided by the verifier.

Each method that keeps something from one epoch to the next (an optimiser's moments) keeps it in a per-item state
object, made once from the item's initial latent by the method's ``new_state`` and handed to its ``propose`` every
epoch (see :mod:`noise_diffusion.methods`). The settings below are module constants, each with where it comes from.

**Zero-order search.** A neighbour of the pivot ``z`` keeps ``‖z‖`` exactly and has cosine exactly ``c`` with it:
``y = ‖z‖·(c·u + sqrt(1−c²)·w)``, ``u = z/‖z‖``, ``w`` a uniformly random unit vector orthogonal to ``u`` (the rule of
the public implementation of Ma et al., ``sayakpaul/tt-scale-flux``, ``generate_neighbors``, with ``c`` = 0.95 and 4
neighbours by default). This rule is kept, rather than ``sqrt(1−λ²)·z + λ·ε``, because it puts every neighbour at the
same fixed distance from the pivot — the neighbourhood ``{y : d(y, z) = λ}`` of the paper, here the angle
``arccos c`` on the sphere of radius ``‖z‖`` — and it stays on the Gaussian prior: a standard-normal ``z`` has a
uniform direction independent of its norm, the construction commutes with rotations, so ``y`` again has a uniform
direction and the norm of ``z``, i.e. it is standard normal. The ε-mix is standard normal too but has a random distance
and a random norm.
The search keeps its pivot after an epoch without a better neighbour (the loop's ``improved`` rule), where
tt-scale-flux restarts from a fresh random noise; the restart is a draw of best-of-N, which the package has as its own
method.

**ReNO.** The defaults of ``ExplainableML/ReNO`` (``arguments.py``, ``training/optim.py``, ``training/trainer.py``):
SGD with learning rate 5, momentum 0.9 and Nesterov momentum, on the loss ``−score + reg``; the norm regulariser
``reg = 0.01·(½‖z‖² − (D−1)·log‖z‖)`` (the negative log-density of a χ_D norm up to a constant, smallest at
``‖z‖ = sqrt(D−1)``; ``D`` the elements of one latent); the gradient's L2 norm clipped to 0.1 before each step.

**Mean–variance.** InitNO's reparametrisation (``xiefan-guo/initno``, ``pipeline_sd_initno.py``): ``z' = z·exp(½·ℓ) +
μ`` per element, ``μ = ℓ = 0`` at the start (ℓ = log σ²), optimised with Adam (learning rate 1e-2, eps 1e-3, betas
(0.9, 0.999)) on ``−score``; after each step, InitNO's KL term ``KL = mean(−½(1 + ℓ − μ² − exp ℓ))`` is driven
below 1e-3 by further steps of the same Adam on the KL alone, as InitNO does. This package keeps InitNO's rule and
values as they are, because the paper names InitNO's adjustment and gives no settings of its own; it only caps the KL
steps at :data:`KL_MAX_STEPS` per epoch (InitNO's loop has no cap) and records the KL reached.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

ZERO_ORDER_COSINE = 0.95  # tt-scale-flux's ``threshold``
ZERO_ORDER_NEIGHBOURS = 4  # tt-scale-flux's ``num_neighbors``

RENO_LR, RENO_MOMENTUM, RENO_NESTEROV = 5.0, 0.9, True
RENO_REG_WEIGHT, RENO_GRAD_CLIP = 0.01, 0.1

MEAN_VARIANCE_LR, MEAN_VARIANCE_EPS, MEAN_VARIANCE_BETAS = 1e-2, 1e-3, (0.9, 0.999)
KL_BOUND = 1e-3
KL_MAX_STEPS = 1000


# ------------------------------------------------------------------------------------------------ zero-order search

def neighbours(z: Tensor, cosine: float, count: int, rng: torch.Generator) -> Tensor:
    """``[count, *z.shape]`` neighbours of one pivot ``z``: each with exactly ``‖z‖`` and cosine ``cosine`` with ``z``
    (computed in float64, returned in ``z``'s dtype)."""
    flat = z.reshape(-1).double()
    radius = flat.norm()
    unit = flat / radius.clamp_min(1e-12)
    draws = torch.randn((count, flat.numel()), generator=rng, device=z.device, dtype=torch.float64)
    orthogonal = draws - (draws @ unit)[:, None] * unit[None]
    orthogonal = orthogonal / orthogonal.norm(dim=1, keepdim=True).clamp_min(1e-12)
    result = radius * (cosine * unit[None] + math.sqrt(1.0 - cosine**2) * orthogonal)
    return result.reshape(count, *z.shape).to(z.dtype)


def zero_order_step(z: Tensor, grad, scores, rngs: Sequence[torch.Generator], options: dict, states):
    """``[B, N, *S]``: N neighbours of every pivot, item i's drawn from ``rngs[i]``."""
    cosine, count = options["neighbour_cosine"], options["num_candidates"]
    pool = torch.stack([neighbours(z[j], cosine, count, rng) for j, rng in enumerate(rngs)])
    return pool, [{} for _ in rngs]


# ------------------------------------------------------------------------------------------------------------- ReNO

@dataclass
class MomentumState:
    """One item's SGD momentum buffer (None before the first step)."""

    buffer: Tensor | None = None


def new_momentum_state(z: Tensor) -> MomentumState:
    return MomentumState()


def norm_regulariser_grad(z: Tensor, weight: float = RENO_REG_WEIGHT) -> Tensor:
    """Gradient of ``weight·(½‖z‖² − (D−1)·log‖z‖)`` per item of ``z`` ``[B, *S]``: ``weight·(z − (D−1)·z/‖z‖²)``."""
    flat = z.reshape(z.shape[0], -1).double()
    dim = flat.shape[1]
    norm_sq = (flat * flat).sum(1, keepdim=True)
    return (weight * (flat - (dim - 1) * flat / norm_sq)).reshape(z.shape).to(z.dtype)


def clip_per_item(grad: Tensor, max_norm: float) -> tuple[Tensor, list[float]]:
    """Every item's gradient scaled by ``min(1, max_norm/(‖g‖ + 1e-6))`` (the rule of ``torch.nn.utils.
    clip_grad_norm_``), and the norms before clipping."""
    norms = grad.reshape(grad.shape[0], -1).norm(dim=1)
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    return grad * scale.view(-1, *([1] * (grad.dim() - 1))), norms.tolist()


def reno_step(z: Tensor, grad: Tensor, scores, rngs, options: dict, states: Sequence[MomentumState]):
    """One ReNO iteration per item: the loss ``−score + reg``, its gradient clipped, then an SGD step (torch's
    rule: ``b ← μ·b + g`` (``b = g`` at first), ``d = g + μ·b`` with Nesterov, ``z ← z − lr·d``)."""
    loss_grad = -grad.float() + norm_regulariser_grad(z.float())
    clipped, norms = clip_per_item(loss_grad, RENO_GRAD_CLIP)
    steps = []
    for j, state in enumerate(states):
        g = clipped[j]
        state.buffer = g.clone() if state.buffer is None else RENO_MOMENTUM * state.buffer + g
        steps.append(g + RENO_MOMENTUM * state.buffer if RENO_NESTEROV else state.buffer)
    z_next = z - RENO_LR * torch.stack(steps).to(z.dtype)
    norms_after = z_next.reshape(z.shape[0], -1).norm(dim=1).tolist()
    return z_next, [{"gradient_norm": n, "latent_norm": m} for n, m in zip(norms, norms_after)]


# -------------------------------------------------------------------------------------------------- mean–variance

@dataclass
class MeanVarianceState:
    """One item's fixed base latent, its per-element (μ, ℓ = log σ²) and their Adam moments."""

    base: Tensor
    mean: Tensor
    log_var: Tensor
    moments: list  # [m_μ, v_μ, m_ℓ, v_ℓ]
    steps: int = 0

    def latent(self) -> Tensor:
        return self.base * torch.exp(0.5 * self.log_var) + self.mean


def new_mean_variance_state(z: Tensor) -> MeanVarianceState:
    zero = torch.zeros_like(z, dtype=torch.float32)
    return MeanVarianceState(z.float().clone(), zero.clone(), zero.clone(), [zero.clone() for _ in range(4)])


def kl_to_prior(mean: Tensor, log_var: Tensor) -> float:
    """InitNO's KL: the per-element KL(N(μ, σ²) ‖ N(0, 1)) averaged over the elements."""
    return float((-0.5 * (1 + log_var - mean**2 - log_var.exp())).mean())


def adam_update(state: MeanVarianceState, grad_mean: Tensor, grad_log_var: Tensor) -> None:
    """One step of torch's Adam (no weight decay, no amsgrad) on (μ, ℓ) with the given loss gradients."""
    beta1, beta2 = MEAN_VARIANCE_BETAS
    state.steps += 1
    for k, (param, grad) in enumerate(((state.mean, grad_mean), (state.log_var, grad_log_var))):
        m, v = state.moments[2 * k], state.moments[2 * k + 1]
        m.mul_(beta1).add_(grad, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        m_hat = m / (1 - beta1**state.steps)
        denom = (v / (1 - beta2**state.steps)).sqrt() + MEAN_VARIANCE_EPS
        param.sub_(MEAN_VARIANCE_LR * m_hat / denom)


def project_kl(state: MeanVarianceState) -> int:
    """InitNO's KL rule: Adam steps on the KL alone while it exceeds :data:`KL_BOUND` (at most
    :data:`KL_MAX_STEPS`); returns the number of steps taken."""
    size = state.mean.numel()
    for taken in range(KL_MAX_STEPS):
        if kl_to_prior(state.mean, state.log_var) <= KL_BOUND:
            return taken
        adam_update(state, state.mean / size, 0.5 * (state.log_var.exp() - 1) / size)
    return KL_MAX_STEPS


def mean_variance_step(z: Tensor, grad: Tensor, scores, rngs, options: dict, states: Sequence[MeanVarianceState]):
    """One Adam step on (μ, ℓ) raising the score (chain rule through ``z' = z·exp(½ℓ) + μ``), then InitNO's KL
    rule; returns the new ``z'``."""
    latents, infos = [], []
    for j, state in enumerate(states):
        g = grad[j].float()
        scale = torch.exp(0.5 * state.log_var)
        adam_update(state, -g, -g * state.base * 0.5 * scale)
        kl_steps = project_kl(state)
        latents.append(state.latent())
        infos.append({"kl": kl_to_prior(state.mean, state.log_var), "kl_steps": kl_steps})
    return torch.stack(latents).to(z.dtype), infos
