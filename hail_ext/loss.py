"""The public loss functions."""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch

from hail_ext import _ops, reference
from hail_ext._checks import check_inputs
from hail_ext.options import MEDOptions

logger = logging.getLogger(__name__)
_warned_devices: set[str] = set()


class MEDStats(NamedTuple):
    """Detached per-peer parts of the loss, for logging.

    ce: `[K]` mean cross-entropy of each peer over the valid rows (weighted by `row_weight`).
    med: `[K]` mean MED term of each peer over the kept rows (zeros when K == 1).
    rows_kept: number of valid rows the truncation (`beta`) kept, a 0-dim int64 tensor.
    """

    ce: torch.Tensor
    med: torch.Tensor
    rows_kept: torch.Tensor


def med_loss(
    hidden,
    item_weight: torch.Tensor,
    target: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    row_weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    alpha: float = 0.5,
    gamma: float = 1.0,
    beta: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """The HAIL loss of K peers over the full item catalogue (docs/SPEC.md), without `[K, N, V]`.

    Args:
        hidden: `[K, N, d]` (or a sequence of K `[N, d]`), each peer's representation of N rows.
        item_weight: `[V, d]` shared by the peers, or `[K, V, d]`, the output item embeddings.
        target: `[N]` int64, the next item of each row, in `[0, V)` or `ignore_index`.
        bias: optional `[V]` or `[K, V]` output bias.
        row_weight: optional `[N]` weights >= 0 (0 = padding).
        alpha, gamma, beta, ignore_index, reduction: see :class:`hail_ext.MEDOptions`.

    Returns:
        The loss in the dtype of `hidden`: a scalar for "mean" (sum over peers and rows divided
        by the total row weight) and "sum", `[K, N]` for "none". With K == 1 it is the plain
        cross-entropy of `hidden[0] @ item_weight.T + bias`.
    """
    opts = MEDOptions(alpha, gamma, beta, ignore_index, reduction)
    loss, _stats = _med_loss(hidden, item_weight, target, bias, row_weight, opts, stats=False)
    return loss


def med_loss_with_stats(
    hidden,
    item_weight: torch.Tensor,
    target: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    row_weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    alpha: float = 0.5,
    gamma: float = 1.0,
    beta: float = 0.0,
    reduction: str = "mean",
) -> tuple[torch.Tensor, MEDStats]:
    """:func:`med_loss` and its :class:`MEDStats`, from the same sweeps over the items."""
    opts = MEDOptions(alpha, gamma, beta, ignore_index, reduction)
    return _med_loss(hidden, item_weight, target, bias, row_weight, opts, stats=True)


def linear_cross_entropy(
    hidden: torch.Tensor,
    item_weight: torch.Tensor,
    target: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    row_weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """`F.cross_entropy(hidden @ item_weight.T + bias, target)` without materialising the logits.

    `hidden` is `[N, d]`, `item_weight` `[V, d]`, `bias` `[V]`; "none" returns `[N]`.
    """
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 2:
        shape = tuple(hidden.shape) if isinstance(hidden, torch.Tensor) else type(hidden).__name__
        raise ValueError(f"hidden must be [N, d], got {shape}")
    if not isinstance(item_weight, torch.Tensor) or item_weight.dim() != 2:
        shape = getattr(item_weight, "shape", None)
        raise ValueError(f"item_weight must be [V, d], got {tuple(shape) if shape else shape}")
    if bias is not None and (not isinstance(bias, torch.Tensor) or bias.dim() != 1):
        raise ValueError(f"bias must be [V], got {tuple(getattr(bias, 'shape', ()))}")
    opts = MEDOptions(ignore_index=ignore_index, reduction=reduction)
    loss, _ = _med_loss(hidden.unsqueeze(0), item_weight, target, bias, row_weight, opts, False)
    return loss[0] if reduction == "none" else loss


def _med_loss(hidden, item_weight, target, bias, row_weight, opts: MEDOptions, stats: bool):
    hidden, item_weight, bias = check_inputs(hidden, item_weight, target, bias, row_weight)
    if not _ops.has_kernel(hidden.device):
        return _reference_loss(hidden, item_weight, target, bias, row_weight, opts, stats)

    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (hidden, item_weight, bias)
    )
    loss, ce, med, kept, *_ = torch.ops.hail_ext.med_forward(
        hidden,
        item_weight,
        target,
        bias,
        row_weight,
        opts.ignore_index,
        opts.alpha,
        opts.gamma,
        opts.beta,
        _ops.REDUCTION_CODES[opts.reduction],
        needs_grad,
    )
    loss = loss.to(hidden.dtype)
    if not stats:
        return loss, None
    return loss, _stats(ce, med, kept, target, row_weight, opts)


def _stats(ce, med, kept, target, row_weight, opts: MEDOptions) -> MEDStats:
    valid = target != opts.ignore_index
    weight = valid.to(ce.dtype) if row_weight is None else row_weight.to(ce.dtype) * valid
    kept_weight = weight * kept
    mean = lambda x, w: (x * w).sum(-1) / w.sum().clamp_min(torch.finfo(x.dtype).tiny)  # noqa: E731
    return MEDStats(
        ce=mean(ce, weight).detach(),
        med=mean(med, kept_weight).detach(),
        rows_kept=(kept & valid).sum(),
    )


def _reference_loss(hidden, item_weight, target, bias, row_weight, opts, stats: bool):
    device = str(hidden.device)
    if device not in _warned_devices:
        _warned_devices.add(device)
        reason = f"not built ({_ops.IMPORT_ERROR})" if _ops._C is None else "not compiled for it"
        logger.warning(
            "hail_ext: no fused kernel for %s (%s); using the pure-PyTorch loss, which holds "
            "[K, N, V] logits",
            device,
            reason,
        )
    reference.check_values(target, row_weight, item_weight.shape[-2], opts.ignore_index)
    rows, ce, med, kept = reference.med_rows(hidden, item_weight, target, bias, row_weight, opts)
    loss = reference.reduce_rows(rows, target, row_weight, opts).to(hidden.dtype)
    if not stats:
        return loss, None
    return loss, _stats(
        ce, med, kept.to(torch.bool) & (target != opts.ignore_index), target, row_weight, opts
    )
