"""How far a latent lies from the Gaussian prior N(0, I) that the sampler expects: an image-quality proxy that needs
no judge. A search that pushes the initial noise off the prior (plain gradient ascent on z_T can) gives the model an
input unlike any it was trained on.

Two numbers per latent z with D entries:

- ``prior_norm_gap`` = |‖z‖²/D − 1|: a draw of N(0, I) has E‖z‖²/D = 1 and a spread of √(2/D) around it;
- ``prior_ks``: the Kolmogorov–Smirnov statistic of z's entries against N(0, 1),
  D_n = max_i max(i/n − Φ(x_(i)), Φ(x_(i)) − (i − 1)/n) over the sorted entries x_(1) ≤ … ≤ x_(n); on average
  about 0.87/√n for a draw of the prior, larger the further the entries' distribution is from
  the standard normal one.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

NORM_GAP = "prior_norm_gap"
KS = "prior_ks"
KEYS = (NORM_GAP, KS)


def norm_gap(z: Tensor) -> Tensor:
    """|‖z‖²/D − 1| per row of ``z`` (the first dimension is the batch), in float64."""
    flat = z.detach().reshape(z.shape[0], -1).double()
    return (flat.pow(2).mean(dim=1) - 1).abs()


def ks_statistic(z: Tensor) -> Tensor:
    """The Kolmogorov–Smirnov statistic of each row's entries against N(0, 1), in float64."""
    flat = z.detach().reshape(z.shape[0], -1).double()
    n = flat.shape[1]
    ordered = flat.sort(dim=1).values
    cdf = 0.5 * (1 + torch.erf(ordered / math.sqrt(2)))
    rank = torch.arange(1, n + 1, dtype=torch.float64, device=flat.device)
    above = (rank / n - cdf).amax(dim=1)  # the empirical CDF just after each point exceeds Φ
    below = (cdf - (rank - 1) / n).amax(dim=1)  # ... or Φ exceeds it just before
    return torch.maximum(above, below)


def prior_stats(z: Tensor) -> list[dict[str, float]]:
    """Per row of ``z``: ``{"prior_norm_gap": …, "prior_ks": …}``, ready for an epoch record's ``info`` (None for a
    latent that is not finite, which strict JSON cannot hold)."""
    gaps, ks = norm_gap(z).tolist(), ks_statistic(z).tolist()
    return [{NORM_GAP: _finite(g), KS: _finite(k)} for g, k in zip(gaps, ks)]


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
