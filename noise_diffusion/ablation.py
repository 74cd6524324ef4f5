"""The ablation row of one method: how fast its search converges and what its best image costs in quality.

- ``mean_best_at_epoch_<k>`` (k = 1, 5, 10) and ``mean_best_last``: the mean over runs of the best score among
  epochs 0..k (a run that stopped early at its target keeps its best; None where a run's epoch budget ends before
  k) and of the final best score;
- ``reach_<t>_median_epoch`` and ``reach_<t>_never`` (t = 0.9): the median over runs of the first epoch whose
  score is at least t, a run that never gets there counted as later than every epoch (None when that leaves the
  median unreached), and how many runs never got there;
- ``held_out``: per held-out verifier, the mean score of the best image and the guide's best score minus it;
- ``prior_*``: the mean distance of the scored latent from N(0, I) (:mod:`noise_diffusion.prior_stats`) at epoch 0
  and at the best epoch, over the runs whose records hold it (``prior_runs``; older records do not).
"""

from __future__ import annotations

import math
import statistics
from typing import Sequence

from .prior_stats import KS, NORM_GAP
from .records import RunRecord

CHECKPOINTS = (1, 5, 10)
REACH = 0.9


def best_at(record: RunRecord, epoch: int) -> float | None:
    """The best score among epochs 0..``epoch`` of a run; None when its epoch budget ends before ``epoch``."""
    budget = record.search.epochs if record.search is not None else max(e.epoch for e in record.epochs)
    if epoch > budget:
        return None
    return max(e.score for e in record.epochs if e.epoch <= epoch)


def first_reach(record: RunRecord, threshold: float = REACH) -> int | None:
    """The first epoch whose score is at least ``threshold``; None when no epoch's is."""
    return min((e.epoch for e in record.epochs if e.score >= threshold), default=None)


def censored_median(epochs: Sequence[int | None]) -> float | None:
    """The median of ``epochs``, None (never) ranked after every epoch; None when the median falls on a never."""
    if not epochs:
        return None
    median = statistics.median(math.inf if e is None else e for e in epochs)
    return None if math.isinf(median) else float(median)


def prior_at(record: RunRecord, epoch: int, key: str) -> float | None:
    """The prior statistic ``key`` of the latent scored at ``epoch``, None when the record does not hold it."""
    value = next((e.info.get(key) for e in record.epochs if e.epoch == epoch), None)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def ablation_row(runs: Sequence) -> dict:
    """The ablation row of a method's runs (:class:`~noise_diffusion.report.Run`: a record and its held-out
    scores)."""
    records = [run.record for run in runs]
    row: dict = {"runs": len(records)}
    for k in CHECKPOINTS:
        row[f"mean_best_at_epoch_{k}"] = _mean_all([best_at(r, k) for r in records])
    row["mean_best_last"] = _mean_all([r.best_score for r in records])
    reached = [first_reach(r) for r in records]
    row[f"reach_{REACH}_median_epoch"] = censored_median(reached)
    row[f"reach_{REACH}_never"] = sum(e is None for e in reached)
    row["held_out"] = held_out_row(runs)
    row.update(prior_row(records))
    return row


def held_out_row(runs: Sequence) -> dict[str, dict]:
    """Per held-out verifier: the runs it scored, its mean score of their best images and the guide's mean best
    score minus it (same images)."""
    out = {}
    for verifier in sorted({v for run in runs for v in run.held_out}):
        scored = [run for run in runs if verifier in run.held_out]
        held = [run.held_out[verifier].best_score for run in scored]
        guide = [run.record.best_score for run in scored]
        out[verifier] = {"runs": len(scored), "mean_best": _mean_all(held),
                         "guide_minus_held_out": _mean_all(guide) - _mean_all(held)}
    return out


def prior_row(records: Sequence[RunRecord]) -> dict:
    """The mean prior statistics at epoch 0 and at the best epoch, over the records that hold both."""
    holding = [r for r in records if all(prior_at(r, e, key) is not None
                                         for e in (0, r.best_epoch) for key in (NORM_GAP, KS))]
    row: dict = {"prior_runs": len(holding)}
    for key in (NORM_GAP, KS):
        row[f"{key}_initial"] = _mean_all([prior_at(r, 0, key) for r in holding])
        row[f"{key}_best"] = _mean_all([prior_at(r, r.best_epoch, key) for r in holding])
    return row


def _mean_all(values: Sequence[float | None]) -> float | None:
    """The mean, None when there are no values or any is None (a mean over only some runs would mislead)."""
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values)
