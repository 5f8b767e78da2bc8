"""Argument checks shared by the fused loss and the reference: every message names the argument,
what it got and what is allowed."""

from __future__ import annotations

from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def stack_hidden(hidden) -> torch.Tensor:
    """Accept `[K, N, d]` or a sequence of K tensors `[N, d]`."""
    if isinstance(hidden, torch.Tensor):
        return hidden
    if isinstance(hidden, Sequence) and len(hidden) > 0:
        if not all(isinstance(h, torch.Tensor) for h in hidden):
            raise ValueError("hidden: a sequence must hold only tensors of shape [N, d]")
        shapes = {tuple(h.shape) for h in hidden}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise ValueError(f"hidden: the peers' tensors must all be [N, d], got {sorted(shapes)}")
        return torch.stack(list(hidden))
    raise ValueError(f"hidden must be a [K, N, d] tensor or a non-empty sequence, got {hidden!r}")


def check_inputs(hidden, item_weight, target, bias=None, row_weight=None):
    """Check shapes, dtypes and devices; return (hidden [K, N, d], item_weight, bias)."""
    hidden = stack_hidden(hidden)
    _need_tensor("item_weight", item_weight)
    _need_tensor("target", target)

    if hidden.dim() != 3:
        raise ValueError(f"hidden must be [K, N, d], got shape {tuple(hidden.shape)}")
    num_peers, num_rows, dim = hidden.shape
    if num_peers < 1:
        raise ValueError(f"hidden must hold at least one peer (K >= 1), got shape {_s(hidden)}")
    if hidden.dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"hidden must be float16, bfloat16, float32 or float64, got {hidden.dtype}"
        )

    if item_weight.dim() == 2:
        num_items = item_weight.shape[0]
    elif item_weight.dim() == 3 and item_weight.shape[0] == num_peers:
        num_items = item_weight.shape[1]
    else:
        raise ValueError(
            f"item_weight must be [V, d] or [K, V, d] with K={num_peers}, got {_s(item_weight)}"
        )
    if item_weight.shape[-1] != dim:
        raise ValueError(
            f"item_weight {_s(item_weight)} and hidden {_s(hidden)} disagree on d "
            f"({item_weight.shape[-1]} != {dim})"
        )
    if num_items == 0:
        raise ValueError(f"item_weight holds an empty catalogue (V = 0), shape {_s(item_weight)}")

    if target.dim() != 1 or target.shape[0] != num_rows:
        raise ValueError(f"target must be [N] with N={num_rows}, got shape {_s(target)}")
    if target.dtype != torch.int64:
        raise ValueError(f"target must be int64 (torch.long), got {target.dtype}")

    if bias is not None:
        _need_tensor("bias", bias)
        if tuple(bias.shape) not in ((num_items,), (num_peers, num_items)):
            raise ValueError(
                f"bias must be [V] or [K, V] with K={num_peers}, V={num_items}, got {_s(bias)}"
            )
    if row_weight is not None:
        _need_tensor("row_weight", row_weight)
        if tuple(row_weight.shape) != (num_rows,):
            raise ValueError(f"row_weight must be [N] with N={num_rows}, got {_s(row_weight)}")
        if not row_weight.is_floating_point():
            raise ValueError(f"row_weight must be a floating tensor, got {row_weight.dtype}")

    for name, t in (("item_weight", item_weight), ("bias", bias)):
        if t is not None and t.dtype != hidden.dtype:
            raise ValueError(f"{name} has dtype {t.dtype} but hidden has {hidden.dtype}; cast one")
    for name, t in (
        ("item_weight", item_weight),
        ("target", target),
        ("bias", bias),
        ("row_weight", row_weight),
    ):
        if t is not None and t.device != hidden.device:
            raise ValueError(f"{name} is on {t.device} but hidden is on {hidden.device}")
    return hidden, item_weight, bias


def check_values(target, row_weight, num_items: int, ignore_index: int) -> None:
    """Data-dependent checks (the fused kernels make the same checks as they read the data)."""
    bad = (target != ignore_index) & ((target < 0) | (target >= num_items))
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"target[{row}] = {int(target[row])} is outside [0, {num_items}) "
            f"and is not ignore_index ({ignore_index})"
        )
    if row_weight is not None:
        bad = ~torch.isfinite(row_weight) | (row_weight < 0)
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"row_weight[{row}] = {float(row_weight[row])}; weights must be finite and >= 0"
            )


def _need_tensor(name: str, value) -> None:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")


def _s(t: torch.Tensor) -> tuple:
    return tuple(t.shape)
