"""Inputs and comparisons shared by the loss tests."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

import hail_ext


@dataclass
class Case:
    hidden: torch.Tensor  # [K, N, d]
    item_weight: torch.Tensor  # [V, d] or [K, V, d]
    target: torch.Tensor  # [N]
    bias: torch.Tensor | None
    row_weight: torch.Tensor | None

    def inputs(self, dtype=None, requires_grad=True):
        """Leaf copies (optionally cast) of the float inputs, and the kwargs for the loss."""

        def leaf(t):
            if t is None:
                return None
            t = t.detach().to(dtype or t.dtype).clone()
            return t.requires_grad_(requires_grad)

        hidden, weight, bias = leaf(self.hidden), leaf(self.item_weight), leaf(self.bias)
        return hidden, weight, bias


def make_case(
    num_peers=2,
    num_rows=37,
    dim=16,
    num_items=203,
    *,
    bias=None,
    per_peer=False,
    weights=False,
    ignored=0,
    scale=1.0,
    seed=0,
    dtype=torch.float64,
    device="cpu",
) -> Case:
    """Random inputs; logits of spread `scale`. bias in (None, "shared", "peer"). Drawn on the
    CPU, then moved to `device`, so that every device sees the same numbers."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(num_peers, num_rows, dim, generator=gen, dtype=dtype) * scale
    shape = (num_peers, num_items, dim) if per_peer else (num_items, dim)
    item_weight = torch.randn(*shape, generator=gen, dtype=dtype) / dim**0.5
    target = torch.randint(0, num_items, (num_rows,), generator=gen)
    if ignored:
        target[torch.randperm(num_rows, generator=gen)[:ignored]] = -100
    bias_t = None
    if bias == "shared":
        bias_t = torch.randn(num_items, generator=gen, dtype=dtype)
    elif bias == "peer":
        bias_t = torch.randn(num_peers, num_items, generator=gen, dtype=dtype)
    row_weight = None
    if weights:
        row_weight = torch.rand(num_rows, generator=gen, dtype=dtype) * 2
        row_weight[::5] = 0.0
    case = Case(hidden, item_weight, target, bias_t, row_weight)
    for field in dataclasses.fields(case):
        value = getattr(case, field.name)
        if value is not None:
            setattr(case, field.name, value.to(device))
    return case


def loss_and_grads(fn, case: Case, dtype=None, upstream=None, **options):
    """The loss of `fn` and the gradients of hidden, item_weight and bias."""
    hidden, weight, bias = case.inputs(dtype)
    row_weight = None if case.row_weight is None else case.row_weight.to(dtype or hidden.dtype)
    loss = fn(hidden, weight, case.target, bias=bias, row_weight=row_weight, **options)
    grad_out = torch.ones_like(loss) if upstream is None else upstream.to(loss.dtype)
    leaves = [t for t in (hidden, weight, bias) if t is not None]
    grads = torch.autograd.grad(loss, leaves, grad_out, allow_unused=True)
    return loss.detach(), [g if g is None else g.detach() for g in grads]


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute error relative to the largest expected magnitude."""
    actual, expected = actual.double(), expected.double()
    if expected.numel() == 0:
        return 0.0
    scale = expected.abs().max().clamp_min(1e-30)
    return float((actual - expected).abs().max() / scale)


def assert_close_to_reference(case: Case, dtype, tol: float, upstream=None, **options):
    """Fused loss in `dtype` against the reference in float64, loss and every gradient."""
    got, got_grads = loss_and_grads(hail_ext.med_loss, case, dtype, upstream, **options)
    want, want_grads = loss_and_grads(
        hail_ext.reference.med_loss, case, torch.float64, upstream, **options
    )
    assert got.dtype == (dtype or case.hidden.dtype)
    assert got.shape == want.shape
    assert rel_err(got, want) < tol, f"loss: {rel_err(got, want):.3g} >= {tol}"
    for name, g, w in zip(("hidden", "item_weight", "bias"), got_grads, want_grads, strict=False):
        assert g.dtype == (dtype or case.hidden.dtype), name
        assert rel_err(g, w) < tol, f"grad {name}: {rel_err(g, w):.3g} >= {tol}"


def check_non_contiguous_inputs(device: str) -> None:
    """Strided views reach the operator as they are (Case.inputs() would clone them contiguous):
    loss and gradients against the reference on contiguous copies."""
    case = make_case(2, num_rows=20, dim=6, num_items=50, bias="peer", weights=True, seed=3)
    want, want_grads = loss_and_grads(hail_ext.reference.med_loss, case, reduction="sum")

    def on(t):
        return t.to(device)

    hidden = on(case.hidden.transpose(1, 2).contiguous()).transpose(1, 2).requires_grad_()
    # Each column twice, side by side: the even columns are the table.
    wide = on(torch.stack([case.item_weight] * 2, -1).flatten(-2)).requires_grad_()
    weight = wide[:, ::2]
    bias = on(case.bias.t().contiguous()).t().requires_grad_()
    target = on(torch.stack([case.target, case.target], 1))[:, 0]
    row_weight = on(torch.stack([case.row_weight, case.row_weight], 1))[:, 0]
    views = (hidden, weight, bias, target, row_weight)
    assert not any(t.is_contiguous() for t in views)

    loss = hail_ext.med_loss(
        hidden, weight, target, bias=bias, row_weight=row_weight, reduction="sum"
    )
    loss.backward()
    assert rel_err(loss.detach().cpu(), want) < 1e-10
    got_grads = (hidden.grad, wide.grad[:, ::2], bias.grad)
    names = ("hidden", "item_weight", "bias")
    for name, got, expected in zip(names, got_grads, want_grads, strict=True):
        assert rel_err(got.cpu(), expected) < 1e-10, name
    assert torch.all(wide.grad[:, 1::2] == 0)
