"""The state of a search over a batch of items: each item's progress, the current latents, scores and gradients,
and the one place where a scored epoch (epoch 0 and every later one alike) is recorded."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor

from .prior_stats import prior_stats
from .records import Compute, EpochRecord, RunImages, RunRecord
from .search_config import SearchConfig


@dataclass
class ItemProgress:
    """One item's outcome so far (mutable while the search runs; :meth:`record` freezes it)."""

    prompt: str
    seed: int
    initial_image: Tensor | None = None
    initial_score: float = math.nan
    best_image: Tensor | None = None
    best_latent: Tensor | None = None
    best_score: float = math.nan
    best_epoch: int = 0
    epochs: list = field(default_factory=list)  # EpochRecords (or their JSON dicts)
    compute: dict = field(default_factory=lambda: dict.fromkeys(
        ("generations", "model_evals", "model_backwards", "verifier_forward", "verifier_backward"), 0))
    epoch_images: list = field(default_factory=list)
    seconds: float = 0.0
    failure: str | None = None  # why the item stopped unfinished (a non-finite score)

    def add(self, epoch: EpochRecord, image: Tensor, latent: Tensor, keep_image: bool) -> bool:
        """Record one scored latent; False (with :attr:`failure` set) when its score or gradient is not finite."""
        self.epochs.append(epoch)
        if epoch.epoch == 0:
            self.initial_image, self.initial_score = image, epoch.score
            self.best_image, self.best_latent, self.best_score = image, latent, epoch.score
        if self.failure is not None:
            return False
        if epoch.score > self.best_score:
            self.best_score, self.best_epoch = epoch.score, epoch.epoch
            self.best_image, self.best_latent = image, latent
        if keep_image:
            self.epoch_images.append(image)
        return True

    def record(self, search: SearchConfig | None = None) -> RunRecord:
        epochs = tuple(e if isinstance(e, EpochRecord) else EpochRecord.from_json(e) for e in self.epochs)
        images = RunImages(self.initial_image, self.best_image, self.best_latent, tuple(self.epoch_images))
        return RunRecord(self.prompt, self.seed, self.initial_score, self.best_score, self.best_epoch, epochs,
                         Compute(**self.compute), self.seconds, search=search, failure=self.failure, images=images)


@dataclass
class SearchState:
    """The batch being searched: the current latent, score and gradient of every item (rows in item order), which
    items are still active, and each item's :class:`ItemProgress`."""

    items: list[ItemProgress]
    config: SearchConfig
    on_epoch: Callable | None = None
    z: Tensor | None = None
    scores: Tensor | None = None
    grad: Tensor | None = None
    active: list[int] = field(default_factory=list)

    def record_epoch(self, epoch: int, scored: Tensor, scores: Tensor, images: Tensor, grad: Tensor | None,
                     infos: Sequence[dict], accepted: Tensor, seconds: float) -> None:
        """Move the accepted items to their new latents, then record the epoch of every active item."""
        self._merge(scored, scores, grad, accepted)
        host_scores, host_accepted = scores.tolist(), accepted.tolist()
        bad = _bad_gradients(grad, len(self.active))
        prior = prior_stats(scored)  # each scored latent's distance from N(0, I), an image-quality proxy
        for j, i in enumerate(self.active):
            item, score = self.items[i], host_scores[j]
            record = EpochRecord(epoch, score, host_accepted[j], seconds, {**infos[j], **prior[j]})
            if not math.isfinite(score) or bad[j]:
                item.failure = _non_finite(score, epoch, bad[j])
            image = images[j].float().cpu()
            if item.add(record, image, scored[j].float().cpu(), self.config.keep_epoch_images) and self.on_epoch:
                self.on_epoch(i, epoch, image, record)
        self.active = [i for i in self.active if not self._finished(i)]

    def _merge(self, scored: Tensor, scores: Tensor, grad: Tensor | None, accepted: Tensor) -> None:
        """Accepted items move; rejected ones keep their latent, score and gradient."""
        if self.z is None:  # epoch 0: every item starts here
            self.z, self.scores, self.grad = scored, scores, grad
            return
        idx = torch.tensor(self.active, device=self.z.device)[accepted]
        self.z, self.scores = self.z.clone(), self.scores.clone()
        self.z[idx], self.scores[idx] = scored[accepted], scores[accepted]
        if grad is not None:
            self.grad = (torch.zeros_like(self.z) if self.grad is None else self.grad).clone()
            self.grad[idx] = grad[accepted]

    def _finished(self, i: int) -> bool:
        item = self.items[i]
        if item.failure:
            return True
        return self.config.target_score is not None and item.best_score >= self.config.target_score

    def current(self) -> tuple[Tensor, Tensor | None, Tensor]:
        """The active items' latents, gradients and scores."""
        idx = torch.tensor(self.active, device=self.z.device)
        return self.z[idx], (self.grad[idx] if self.grad is not None else None), self.scores[idx]

    def records(self, total_seconds: float) -> list[RunRecord]:
        for item in self.items:
            item.seconds = total_seconds / len(self.items)
        return [item.record(self.config) for item in self.items]


def _bad_gradients(grad: Tensor | None, count: int) -> list[bool]:
    """Per item: does its gradient hold a NaN or an infinity (which would poison the next latent)?"""
    if grad is None:
        return [False] * count
    return (~torch.isfinite(grad).reshape(grad.shape[0], -1).all(dim=1)).tolist()


def _non_finite(score: float, epoch: int, bad_gradient: bool = False) -> str:
    if bad_gradient and math.isfinite(score):
        return f"the gradient of the score is not finite at epoch {epoch}"
    return f"the verifier's score is {score} at epoch {epoch}"

