"""MED with one of its two terms left out, for ablations (`hail train --med-terms`).

For peer k and row n (docs/SPEC.md) MED is `a * CE + push`: the target term `a * CE`, where `a`
is the peers' mean `(1 - q(t))^gamma`, and the push term `-sum over v != t of c(v) log(1 - p(v))`.
The loss is `alpha * CE + (1 - alpha) * MED`, so

- "target" (no push): `(alpha + (1 - alpha) * a) * CE`, a cross-entropy with per-row weights;
- "push" (no target weighting): the full loss minus `(1 - alpha) * a * CE`.

Both are built from the fused loss: one call with `alpha = 1` gives every peer's CE per row
(differentiable, and `q(t) = exp(-CE)` once detached). Hard-row truncation (beta) is not
supported here.
"""

from __future__ import annotations

import torch

import hail_ext

MED_TERMS = ("both", "target", "push")


def full_loss(hidden, item_weight, target, **options):
    return hail_ext.med_loss_with_stats(hidden, item_weight, target, **options)


def med_terms_loss(terms: str):
    """A trainer `loss_fn` that keeps MED's `terms` ("both", "target" or "push")."""
    if terms not in MED_TERMS:
        raise ValueError(f"med_terms must be one of {MED_TERMS}, got {terms!r}")
    if terms == "both":
        return full_loss

    def loss_fn(hidden, item_weight, target, *, bias=None, alpha=0.5, gamma=1.0, beta=0.0):
        if beta != 0.0:
            raise ValueError(f"med_terms={terms!r} needs beta = 0, got beta={beta}")
        if hidden.shape[0] == 1:
            return full_loss(hidden, item_weight, target, bias=bias)

        ce = hail_ext.med_loss(hidden, item_weight, target, bias=bias, alpha=1.0, reduction="none")
        rows = (target != -100).sum().clamp_min(1)
        weight_a = (1.0 - alpha) * _target_weight(ce.detach(), gamma)

        if terms == "target":
            loss = ((alpha + weight_a) * ce).sum() / rows
        else:
            full = hail_ext.med_loss(
                hidden, item_weight, target, bias=bias, alpha=alpha, gamma=gamma
            )
            loss = full - (weight_a * ce).sum() / rows
        return loss, None

    return loss_fn


def _target_weight(ce: torch.Tensor, gamma: float) -> torch.Tensor:
    """`a` of every peer and row: the other peers' mean `(1 - q(t))^gamma`, from their CE."""
    miss = (-torch.expm1(-ce.double())).pow(gamma)  # 1 - q(t) = 1 - exp(-CE)
    others = (miss.sum(0, keepdim=True) - miss) / (ce.shape[0] - 1)
    return others.to(ce.dtype)
