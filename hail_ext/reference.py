"""The HAIL loss written the obvious way, materialising every peer's `[N, V]` logits.

This is the test oracle (run it in float64), the fallback on devices without fused kernels and
the "pure-PyTorch loss" of the benchmarks. Gradients come from autograd through the formulas of
docs/SPEC.md, so they are independent of the hand-derived gradient of the kernels.
"""

from __future__ import annotations

import torch

from hail_ext._checks import check_inputs, check_values  # noqa: F401 (re-exported)
from hail_ext.options import MEDOptions


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
    """Same signature and result as :func:`hail_ext.med_loss`, computed with plain torch ops."""
    opts = MEDOptions(alpha, gamma, beta, ignore_index, reduction)
    hidden, item_weight, bias = check_inputs(hidden, item_weight, target, bias, row_weight)
    check_values(target, row_weight, item_weight.shape[-2], opts.ignore_index)
    rows, _ce, _med, _kept = med_rows(hidden, item_weight, target, bias, row_weight, opts)
    return reduce_rows(rows, target, row_weight, opts).to(hidden.dtype)


def med_rows(hidden, item_weight, target, bias, row_weight, opts: MEDOptions):
    """Per-row loss `[K, N]`, cross-entropy `[K, N]`, MED `[K, N]` and keep mask `[N]`."""
    num_peers, num_rows, _ = hidden.shape
    acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32

    weight = item_weight if item_weight.dim() == 3 else item_weight.expand(num_peers, -1, -1)
    logits = torch.bmm(hidden, weight.transpose(1, 2))  # [K, N, V]
    if bias is not None:
        logits = logits + (bias if bias.dim() == 2 else bias.expand(num_peers, -1)).unsqueeze(1)
    logits = logits.to(acc)

    valid = target != opts.ignore_index
    safe_target = torch.where(valid, target, 0)
    w = valid.to(acc) if row_weight is None else row_weight.to(acc) * valid

    logp = torch.log_softmax(logits, dim=-1)  # [K, N, V]
    logp_target = logp.gather(2, safe_target.view(1, -1, 1).expand(num_peers, -1, 1)).squeeze(2)
    ce = -logp_target  # [K, N]

    kept = _keep_mask(ce.detach(), w > 0, opts.beta)
    if num_peers == 1:
        rows = w * kept * ce
        return rows, (ce * (w > 0)).detach(), torch.zeros_like(ce), kept

    q = logp.detach().exp()  # peers' probabilities, constants
    onehot = torch.nn.functional.one_hot(safe_target, logits.shape[-1]).to(torch.bool)
    peer_mean = _mean_over_other_peers

    a = peer_mean((-torch.expm1(logp_target.detach())) ** opts.gamma)  # [K, N]
    c = peer_mean(q**opts.gamma).masked_fill(onehot, 0.0)  # [K, N, V]
    # c is 0 at the target, whose log(1 - p) may be -inf (p = 1): keep it out of the product.
    log1mp = torch.log(-torch.expm1(logp.masked_fill(onehot, -1.0)))
    med = -(a * logp_target + (c * log1mp).sum(-1))  # [K, N]

    rows = w * kept * (opts.alpha * ce + (1.0 - opts.alpha) * med)
    return rows, (ce * (w > 0)).detach(), (med * (w > 0)).detach(), kept


def reduce_rows(rows, target, row_weight, opts: MEDOptions):
    out_dtype = rows.dtype
    if opts.reduction == "none":
        return rows
    total = rows.sum()
    if opts.reduction == "sum":
        return total
    valid = target != opts.ignore_index
    w = valid.to(out_dtype) if row_weight is None else row_weight.to(out_dtype) * valid
    denom = w.sum()
    return torch.where(denom > 0, total / torch.where(denom > 0, denom, 1.0), 0.0 * total)


def _mean_over_other_peers(x: torch.Tensor) -> torch.Tensor:
    """For each peer k, the mean of x over the peers j != k (dim 0)."""
    num_peers = x.shape[0]
    others = [torch.cat([x[:k], x[k + 1 :]]).mean(0) for k in range(num_peers)]
    return torch.stack(others)


def _keep_mask(ce: torch.Tensor, valid: torch.Tensor, beta: float) -> torch.Tensor:
    """1 for kept rows, 0 for rows among every peer's floor(beta * n_valid) hardest."""
    num_peers, num_rows = ce.shape
    kept = torch.ones(num_rows, dtype=ce.dtype, device=ce.device)
    n_drop = int(beta * int(valid.sum()))
    if n_drop == 0:
        return kept
    dropped_by_all = torch.ones(num_rows, dtype=torch.bool, device=ce.device)
    for k in range(num_peers):
        # Highest CE first; among equals the lower row index ranks higher.
        key = torch.where(valid, ce[k], torch.full_like(ce[k], -float("inf")))
        order = torch.sort(key, descending=True, stable=True).indices
        hardest = torch.zeros(num_rows, dtype=torch.bool, device=ce.device)
        hardest[order[:n_drop]] = True
        dropped_by_all &= hardest
    return kept.masked_fill(dropped_by_all, 0.0)
