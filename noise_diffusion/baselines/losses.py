"""The attention losses of InitNO (Guo et al., CVPR 2024) and Attend-and-Excite (Chefer et al., SIGGRAPH 2023).

Inputs are the aggregated maps of :class:`~noise_diffusion.baselines.attention.AttentionStore`: cross-attention
``[r, r, tokens]`` and self-attention ``[r, r, r·r]``; ``indices`` are the subject tokens (start token = 0).

- **cross-attention response** (both methods): ``max_i (1 - max(smoothed map_i))`` — the subject least attended to;
- **self-attention conflict** (InitNO): for each subject, the self-attention map of the pixel where its smoothed
  cross map peaks, smoothed; for each pair of subjects ``Σ min(a, b) / (Σ (a + b) + 1e-6)``, averaged over pairs;
- **clean** (InitNO): Otsu-threshold each smoothed subject map, keep the 4-connected region that holds its peak; when
  the largest value outside that region exceeds the smallest value inside, the loss is that largest outside value.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from .attention import smooth, text_softmax


@dataclass
class Peaks:
    """Each subject's smoothed cross map, its peak value (differentiable) and the peak's (row, column)."""

    maps: list[Tensor]
    values: list[Tensor]
    coords: list[tuple[int, int]]


def peaks(cross_maps: Tensor, indices: Sequence[int]) -> Peaks:
    """The subjects' peaks in the aggregated cross maps ``[r, r, tokens]`` (prepared by :func:`text_softmax` here)."""
    return subject_peaks(text_softmax(cross_maps), indices)


def subject_peaks(prepared: Tensor, indices: Sequence[int]) -> Peaks:
    """The peaks of the subjects' smoothed maps in the prepared cross maps ``[r, r, tokens - 2]``."""
    maps, values, coords = [], [], []
    for i in indices:
        m = smooth(prepared[:, :, i - 1])
        row, col = divmod(int(m.detach().reshape(-1).argmax()), m.shape[1])
        maps.append(m)
        values.append(m[row, col])
        coords.append((row, col))
    return Peaks(maps, values, coords)


def cross_response_loss(found: Peaks) -> Tensor:
    """``max_i max(0, 1 - peak_i)``."""
    return torch.stack([torch.clamp(1.0 - v, min=0.0) for v in found.values]).max()


def self_conflict_loss(self_maps: Tensor, found: Peaks) -> Tensor:
    """Overlap of the subjects' self-attention maps at their cross-attention peaks, averaged over subject pairs (summed
    pair by pair, as the originals do)."""
    r = self_maps.shape[0]
    per_subject = [smooth(self_maps[row, col].reshape(r, r)) for row, col in found.coords]
    total, pairs = self_maps.new_zeros(()), 0
    for i in range(len(per_subject)):
        for j in range(i + 1, len(per_subject)):
            a, b = per_subject[i], per_subject[j]
            total = total + torch.minimum(a, b).sum() / ((a + b).sum() + 1e-6)
            pairs += 1
    return total / pairs if pairs else total


def otsu_threshold(values: Tensor) -> float:
    """OpenCV's Otsu threshold of ``values`` in [0, 1] read as integers ``floor(255·v)``, divided by 255.

    The threshold is the first integer level t maximising the between-class variance of {≤ t} and {> t}.
    """
    levels = (values.detach().float().cpu() * 255).to(torch.int64).clamp(0, 65535).reshape(-1)
    bins = int(levels.max()) + 1
    hist = torch.bincount(levels, minlength=bins).double() / levels.numel()
    grid = torch.arange(bins, dtype=torch.float64)
    q1 = hist.cumsum(0)
    q2 = 1.0 - q1
    mu_total = (grid * hist).sum()
    partial = (grid * hist).cumsum(0)
    eps = torch.finfo(torch.float32).eps
    valid = (torch.minimum(q1, q2) >= eps) & (torch.maximum(q1, q2) <= 1.0 - eps)
    mu1 = partial / q1.clamp_min(1e-300)
    mu2 = (mu_total - partial) / q2.clamp_min(1e-300)
    sigma = torch.where(valid, q1 * q2 * (mu1 - mu2) ** 2, torch.zeros_like(q1))
    best = 0
    if bool((sigma > 0).any()):
        best = int(torch.argmax(sigma))  # argmax returns the first maximum, as OpenCV's strict '>' does
    return best / 255.0


def peak_region(mask: Tensor, start: tuple[int, int]) -> Tensor:
    """The 4-connected region of ``mask`` (bool ``[H, W]``) that contains ``start`` (empty if ``start`` is outside)."""
    height, width = mask.shape
    inside = mask.detach().cpu().bool()
    region = torch.zeros_like(inside)
    todo = deque([start])
    while todo:
        row, col = todo.popleft()
        if 0 <= row < height and 0 <= col < width and inside[row, col] and not region[row, col]:
            region[row, col] = True
            todo.extend(((row, col + 1), (row, col - 1), (row + 1, col), (row - 1, col)))
    return region.to(mask.device)


def clean_loss(found: Peaks) -> Tensor:
    """Sum over subjects of the largest attention outside the peak's Otsu region, when it beats the region's minimum."""
    total = found.maps[0].new_zeros(())
    for m, coord in zip(found.maps, found.coords):
        mask = peak_region(m >= otsu_threshold(m), coord).to(m.dtype)
        foreground = m * mask + (1 - mask)
        background = m * (1 - mask)
        if background.max() > foreground.min():
            total = total + background.max()
    return total


@dataclass
class InitNOLosses:
    joint: Tensor
    cross: Tensor
    self_: Tensor
    clean: Tensor


def initno_noise_loss(cross_maps: Tensor, self_maps: Tensor, indices: Sequence[int]) -> InitNOLosses:
    """The loss that InitNO's noise optimisation minimises: cross + self + clean, weights 1 : 1 : 1, with the self
    term set to zero while the cross term is above 0.5."""
    found = peaks(cross_maps, indices)
    clean = clean_loss(found)
    cross = cross_response_loss(found)
    self_ = self_conflict_loss(self_maps, found)
    if cross > 0.5:
        self_ = self_ * 0
    return InitNOLosses(cross + self_ + clean, cross, self_, clean)


def initno_guidance_loss(cross_maps: Tensor, self_maps: Tensor, indices: Sequence[int], cache: list) -> InitNOLosses:
    """The loss of InitNO's guided denoising: cross + 0.1·clean + 0.1·alignment + self (the self term is never zeroed).

    Alignment is the L1 distance of each smoothed subject map to the smoothed exponential moving average (0.9 old,
    0.1 new) of the prepared cross maps over the guidance forwards of this generation; ``cache`` (a one-element list,
    empty at the start of a generation) holds that average. Each subject map is smoothed again for it, as the originals
    do, so that the gradient sums in their order.
    """
    prepared = text_softmax(cross_maps)
    found = subject_peaks(prepared, indices)
    clean = clean_loss(found)
    cross = cross_response_loss(found)
    new = prepared.detach().clone()
    cache[:] = [new if not cache else cache[0] * 0.9 + new * (1 - 0.9)]  # (1 - 0.9) = 0.09999999999999998, as written
    alignment = found.maps[0].new_zeros(())
    for i in indices:
        alignment = alignment + (smooth(prepared[:, :, i - 1]) - smooth(cache[0][:, :, i - 1])).abs().mean()
    self_ = self_conflict_loss(self_maps, found)
    joint = cross + 0.1 * clean + 0.1 * alignment + self_
    return InitNOLosses(joint, cross, self_, clean)


def attend_and_excite_loss(cross_maps: Tensor, indices: Sequence[int]) -> Tensor:
    """Attend-and-Excite's loss: the cross-attention response loss alone."""
    return cross_response_loss(peaks(cross_maps, indices))


def kl_to_standard_normal(log_var: Tensor, mean: Tensor) -> Tensor:
    """InitNO's KL term: ``-0.5 · mean(1 + log σ² - μ² - σ²)`` over the elements."""
    return -0.5 * torch.mean(1 + log_var - mean ** 2 - log_var.exp())
