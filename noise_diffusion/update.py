"""The Noise Diffusion update (Miao et al., CVPR 2025, arXiv 2411.16503), as pure tensor functions.

One epoch moves the initial latent ``z`` (standard normal) towards a more faithful image:

    γ  = 1 − sqrt(s)                                   step size from the current score s ∈ [0, 1]
    v_i = (sqrt(1−γ) − 1)·z + sqrt(γ)·σ_i              the move each candidate noise σ_i would make
    a_i = ⟨v_i, g⟩ / ‖v_i‖²                             its alignment with the score gradient g = ∂s/∂z
    z' = sqrt(1−γ)·z + sqrt(γ)·σ_{argmax a}            the "noise diffusion" step

If z and σ are independent N(0, I), so is z': the update keeps the latent on the prior the diffusion model expects.
Dividing by the *squared* norm follows the L-smooth bound s(z+v) ≥ s(z) + ⟨g, v⟩ − (L/2)‖v‖²: the score is
guaranteed to rise when ⟨g, v⟩/‖v‖² > L/2, and the selection maximises exactly that ratio.

No model is needed here; every function works on plain tensors.
"""

from __future__ import annotations

import torch
from torch import Tensor


def gamma_from_score(score: Tensor | float) -> Tensor:
    """Step size γ = 1 − sqrt(s), with the score clamped to [0, 1]. Works element-wise on a batch of scores."""
    score = torch.as_tensor(score, dtype=torch.float32)
    return 1.0 - score.clamp(0.0, 1.0).sqrt()


def diffuse(z: Tensor, noise: Tensor, gamma: Tensor | float) -> Tensor:
    """The Noise Diffusion update ``sqrt(1−γ)·z + sqrt(γ)·noise``.

    ``gamma`` is a scalar or holds one value per leading (batch) index of ``z``.
    """
    gamma = _per_item(gamma, z)
    return (1.0 - gamma).sqrt() * z + gamma.sqrt() * noise


def alignments(z: Tensor, grad: Tensor, pool: Tensor, gamma: Tensor | float) -> Tensor:
    """Alignment a_i = ⟨v_i, g⟩ / ‖v_i‖² of every candidate, with v_i = (sqrt(1−γ) − 1)·z + sqrt(γ)·σ_i.

    ``z`` and ``grad`` have shape ``[*S]``, ``pool`` has shape ``[N, *S]``; returns ``[N]``.
    See :func:`batched_alignments` for many items at once.
    """
    return batched_alignments(z[None], grad[None], pool[None], torch.as_tensor(gamma).reshape(1))[0]


def batched_alignments(z: Tensor, grad: Tensor, pool: Tensor, gamma: Tensor | float) -> Tensor:
    """:func:`alignments` for B items at once: ``z``, ``grad`` ``[B, *S]``, ``pool`` ``[B, N, *S]``, ``gamma``
    ``[B]`` (or a scalar); returns ``[B, N]``.

    Expanding ‖v_i‖² and ⟨v_i, g⟩ into inner products with z and g needs a single matrix product of the pool with
    the stacked ``[g, z]`` instead of materialising the N moves. Computed in float32 whatever the input dtype.
    Where γ = 0 every move is zero; the alignments are then all 0 (the update is the identity anyway).
    """
    batch, num = pool.shape[:2]
    if pool.shape[2:] != z.shape[1:] or grad.shape != z.shape or pool.shape[0] != z.shape[0]:
        raise ValueError(f"shapes do not match: z {tuple(z.shape)}, grad {tuple(grad.shape)}, pool {tuple(pool.shape)}")
    z = z.reshape(batch, -1).float()
    grad = grad.reshape(batch, -1).float()
    pool = pool.reshape(batch, num, -1).float()
    gamma = torch.as_tensor(gamma, dtype=torch.float32, device=z.device).reshape(-1).expand(batch)
    a = ((1.0 - gamma).sqrt() - 1.0)[:, None]  # coefficient of z in every move
    b = gamma.sqrt()[:, None]  # coefficient of the candidate noise

    # One matmul: [B, N, D] @ [B, D, 2] -> ⟨σ_i, g⟩ and ⟨σ_i, z⟩ for every candidate.
    products = torch.bmm(pool, torch.stack([grad, z], dim=2))
    pool_dot_g, pool_dot_z = products[..., 0], products[..., 1]
    z_dot_g = (z * grad).sum(1, keepdim=True)
    z_sq = (z * z).sum(1, keepdim=True)
    pool_sq = (pool * pool).sum(2)
    inner = a * z_dot_g + b * pool_dot_g
    norm_sq = a * a * z_sq + 2 * a * b * pool_dot_z + b * b * pool_sq
    return torch.where(norm_sq > 0, inner / norm_sq.clamp_min(torch.finfo(torch.float32).tiny), 0.0)


def select_noise(z: Tensor, grad: Tensor, pool: Tensor, gamma: Tensor | float) -> int:
    """Index of the candidate in ``pool`` (shape ``[N, *z.shape]``) whose move best aligns with ``grad``.

    The paper's selection rule: argmax_i ⟨v_i, g⟩ / ‖v_i‖² (see :func:`alignments`).
    """
    return int(alignments(z, grad, pool, gamma).argmax())


def _per_item(value: Tensor | float, like: Tensor) -> Tensor:
    """Broadcast a scalar or a per-item vector ``[B]`` against ``like`` of shape ``[B, ...]``."""
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if value.dim() == 1 and like.dim() > 1:
        value = value.reshape(-1, *([1] * (like.dim() - 1)))
    return value
