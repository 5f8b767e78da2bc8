"""Top-k metrics from the rank of the target (0 = ranked first)."""

from __future__ import annotations

import math

import torch

CUTOFFS = (1, 5, 10, 20)
METRICS = ("hr", "ndcg", "mrr")


def target_rank(scores: torch.Tensor, target_score: torch.Tensor) -> torch.Tensor:
    """Rank of the target among `scores` `[..., C]` (which include the target itself): the
    number of other candidates scoring at least as high. A tie counts against the target."""
    at_least = (scores >= target_score.unsqueeze(-1)).sum(-1)
    return at_least - 1


def metric_sums(ranks: torch.Tensor) -> torch.Tensor:
    """ranks `[..., N]` -> sums over N of each metric at each cutoff, `[..., 3, 4]` float64
    (order: METRICS, then CUTOFFS)."""
    ranks = ranks.to(torch.float64)
    cutoffs = torch.tensor(CUTOFFS, dtype=torch.float64, device=ranks.device)
    hit = ranks.unsqueeze(-1) < cutoffs  # [..., N, 4]
    gain = (1.0 / torch.log2(ranks + 2.0)).unsqueeze(-1) * hit
    reciprocal = (1.0 / (ranks + 1.0)).unsqueeze(-1) * hit
    return torch.stack([hit.to(torch.float64), gain, reciprocal], dim=-2).sum(-3)


def as_dict(sums: torch.Tensor, count: int) -> dict:
    """`[3, 4]` sums over `count` users -> {"hr@1": ..., ..., "mrr@20": ...}."""
    out = {}
    for m, metric in enumerate(METRICS):
        for c, cutoff in enumerate(CUTOFFS):
            value = float(sums[m, c]) / count if count else math.nan
            out[f"{metric}@{cutoff}"] = value
    return out
