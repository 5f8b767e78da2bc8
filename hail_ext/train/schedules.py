"""Learning-rate and alpha schedules, as pure functions of the step."""

from __future__ import annotations

import math

ALPHA_SCHEDULES = ("constant", "linear", "cosine")


def lr_factor(step: int, total: int, warmup_steps: int) -> float:
    """Linear warm-up from 0 to 1 over `warmup_steps`, then linear decay to 0 at `total`."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    remaining = total - step
    return max(0.0, remaining / max(1, total - warmup_steps))


def alpha_at(step: int, total_ramp: int, alpha: float, schedule: str) -> float:
    """The weight of plain cross-entropy at `step`.

    "constant" is `alpha` throughout. "linear" and "cosine" start from 1 (cross-entropy only:
    early on the peers' predictions are noise, not knowledge worth distilling) and reach
    `alpha` after `total_ramp` steps.
    """
    if schedule not in ALPHA_SCHEDULES:
        raise ValueError(f"schedule must be one of {ALPHA_SCHEDULES}, got {schedule!r}")
    if schedule == "constant" or total_ramp <= 0 or step >= total_ramp:
        return alpha
    progress = step / total_ramp
    if schedule == "cosine":
        progress = 0.5 * (1.0 - math.cos(math.pi * progress))
    return 1.0 + (alpha - 1.0) * progress
