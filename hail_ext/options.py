"""The options of the HAIL loss, validated once, in one place."""

from __future__ import annotations

import math
from dataclasses import dataclass

REDUCTIONS = ("mean", "sum", "none")


@dataclass(frozen=True)
class MEDOptions:
    """Options of :func:`hail_ext.med_loss` (see docs/SPEC.md for their meaning).

    alpha: weight of plain cross-entropy against mutual exclusivity distillation, in [0, 1].
    gamma: exponent on the peers' probabilities, > 0.
    beta: fraction of the hardest valid rows that may be dropped as noise, in [0, 1).
    ignore_index: target value of rows that carry no loss.
    reduction: "mean" (sum over peers and rows / total row weight), "sum" or "none" ([K, N]).
    """

    alpha: float = 0.5
    gamma: float = 1.0
    beta: float = 0.0
    ignore_index: int = -100
    reduction: str = "mean"

    def __post_init__(self) -> None:
        if not _finite(self.alpha) or not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {self.alpha!r}")
        if not _finite(self.gamma) or self.gamma <= 0.0:
            raise ValueError(f"gamma must be a finite number > 0, got {self.gamma!r}")
        if not _finite(self.beta) or not 0.0 <= self.beta < 1.0:
            raise ValueError(f"beta must lie in [0, 1), got {self.beta!r}")
        if isinstance(self.ignore_index, bool) or not isinstance(self.ignore_index, int):
            raise ValueError(f"ignore_index must be an int, got {self.ignore_index!r}")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {self.reduction!r}")


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
