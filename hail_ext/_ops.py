"""The compiled operators: loading, fake (meta) implementations for torch.compile, autograd.

`hail_ext::med_forward` returns the loss and, when asked (`compute_grad`) and the loss is reduced
to a scalar, the gradients of the inputs for a unit upstream gradient, computed in the same sweeps
over the items. The first backward then only scales them, in place, and hands them on without a
copy. For `reduction="none"` the upstream gradient differs per row, so the backward runs
`hail_ext::med_backward`, which sweeps the items again; so does a second backward through a
retained graph, whose gradients may then differ from the first's by rounding.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

try:
    from hail_ext import _C  # noqa: F401  (loading it registers the operators)

    IMPORT_ERROR: ImportError | None = None
except ImportError as error:  # a source checkout that was never built
    _C = None
    IMPORT_ERROR = error

REDUCTION_CODES = {"none": 0, "mean": 1, "sum": 2}
NUM_SAVED = 7


def has_kernel(device: torch.device) -> bool:
    """Whether a compiled kernel serves tensors on `device`."""
    if _C is None:
        return False
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        return bool(_C.build_info()["cuda"])
    return False


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _grad_shapes(hidden, item_weight, bias):
    empty = hidden.new_empty(0)
    return (
        hidden.new_empty(hidden.shape),
        item_weight.new_empty(item_weight.shape),
        empty if bias is None else bias.new_empty(bias.shape),
    )


if _C is not None:

    @torch.library.register_fake("hail_ext::med_forward")
    def _med_forward_fake(
        hidden,
        item_weight,
        target,
        bias,
        row_weight,
        ignore_index,
        alpha,
        gamma,
        beta,
        reduction,
        compute_grad,
    ):
        num_peers, num_rows, _ = hidden.shape
        acc = _acc_dtype(hidden.dtype)
        stat = hidden.new_empty((num_peers, num_rows), dtype=acc)
        loss = stat if reduction == 0 else hidden.new_empty((), dtype=acc)
        kept = hidden.new_empty((num_rows,), dtype=torch.bool)
        saved = hidden.new_empty((NUM_SAVED, num_peers, num_rows), dtype=acc)
        amax = hidden.new_empty((num_peers, num_rows), dtype=torch.long)
        if compute_grad and reduction != 0:
            grads = _grad_shapes(hidden, item_weight, bias)
        else:
            grads = tuple(hidden.new_empty(0) for _ in range(3))
        return (loss, torch.empty_like(stat), torch.empty_like(stat), kept, saved, amax, *grads)

    @torch.library.register_fake("hail_ext::med_backward")
    def _med_backward_fake(
        grad_rows,
        hidden,
        item_weight,
        target,
        bias,
        row_weight,
        kept,
        saved,
        amax,
        ignore_index,
        alpha,
        gamma,
    ):
        return _grad_shapes(hidden, item_weight, bias)

    def _setup_context(ctx, inputs, output):
        (
            hidden,
            item_weight,
            target,
            bias,
            row_weight,
            ignore_index,
            alpha,
            gamma,
            _beta,
            reduction,
            compute_grad,
        ) = inputs
        _loss, _ce, _med, kept, saved, amax, grad_hidden, grad_weight, grad_bias = output
        # Only the loss receives a gradient; materialised zeros for the other outputs would cost
        # a tensor the size of the item table.
        ctx.set_materialize_grads(False)
        ctx.eager = bool(compute_grad) and reduction != 0
        ctx.reduction = reduction
        ctx.options = (ignore_index, alpha, gamma)
        ctx.has_bias = bias is not None
        ctx.pending = None
        ctx.saved_grads = ctx.eager and _traced(grad_weight)
        if ctx.saved_grads:
            ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
            return
        ctx.save_for_backward(hidden, item_weight, target, bias, row_weight, kept, saved, amax)
        if ctx.eager:
            # Held outside the saved tensors so that the first backward can scale them in place
            # and hand them on without a copy (a copy of grad item_weight is as big as the table).
            ctx.pending = (grad_hidden, grad_weight, grad_bias)

    def _traced(tensor) -> bool:
        """Whether the op is being traced (torch.compile, export, opcheck): there the backward
        must not write into the forward's outputs."""
        return torch.compiler.is_compiling() or type(tensor) is not torch.Tensor

    def _backward(ctx, grad_loss, *_unused):
        if torch.is_grad_enabled() and not torch.compiler.is_compiling():
            # create_graph=True: the result would be differentiated again, but the peers'
            # probabilities are constants and the gradients come precomputed, so it would be wrong.
            raise RuntimeError(
                "hail_ext.med_loss does not support double backward (create_graph=True); "
                "use hail_ext.reference.med_loss for higher-order gradients"
            )
        pending, ctx.pending = ctx.pending, None
        if grad_loss is None:
            return (None,) * 11
        if pending is not None:
            grad_hidden, grad_weight, grad_bias = (g.mul_(grad_loss) for g in pending)
        elif ctx.saved_grads:
            grad_hidden, grad_weight, grad_bias = (g * grad_loss for g in ctx.saved_tensors)
        else:
            # reduction="none", or a second backward through a retained graph: sweep again.
            hidden, item_weight, target, bias, row_weight, kept, saved, amax = ctx.saved_tensors
            grad_rows = _row_grads(grad_loss, ctx.reduction, hidden, target, row_weight, ctx)
            grad_hidden, grad_weight, grad_bias = torch.ops.hail_ext.med_backward(
                grad_rows,
                hidden,
                item_weight,
                target,
                bias,
                row_weight,
                kept,
                saved,
                amax,
                *ctx.options,
            )
        grad_bias = grad_bias if ctx.has_bias else None
        return (grad_hidden, grad_weight, None, grad_bias, None, None, None, None, None, None, None)

    def _row_grads(grad_loss, reduction, hidden, target, row_weight, ctx):
        """The upstream gradient of every [K, N] row, from that of the (reduced) loss."""
        num_peers, num_rows, _ = hidden.shape
        acc = _acc_dtype(hidden.dtype)
        grad_loss = grad_loss.to(acc)
        if reduction == 0:
            return grad_loss
        if reduction == 2:
            return grad_loss.expand(num_peers, num_rows)
        valid = target != ctx.options[0]
        weight = valid.to(acc) if row_weight is None else row_weight.to(acc) * valid
        denom = weight.sum()
        inv = torch.where(denom > 0, 1.0 / torch.where(denom > 0, denom, 1.0), 0.0)
        return (grad_loss * inv).expand(num_peers, num_rows)

    torch.library.register_autograd(
        "hail_ext::med_forward", _backward, setup_context=_setup_context
    )
