"""Finite-difference checks of the fused loss's hand-derived gradient, in float64.

The peers' probabilities enter each peer's loss as constants, so the full loss is not what
finite differences see when every peer moves at once. Peer k's own rows, as a function of peer
k's own inputs (the other peers held still), are: that is what these checks perturb.
"""

import pytest
import torch

import hail_ext
from loss_cases import loss_and_grads, make_case


def own_rows(case, peer, **options):
    """rows[peer] as a function of (hidden[peer], item_weight[peer], bias[peer])."""

    def fn(h, w, b):
        hidden = torch.cat([case.hidden[:peer], h[None], case.hidden[peer + 1 :]])
        weight = torch.cat([case.item_weight[:peer], w[None], case.item_weight[peer + 1 :]])
        bias = torch.cat([case.bias[:peer], b[None], case.bias[peer + 1 :]])
        rows = hail_ext.med_loss(
            hidden,
            weight,
            case.target,
            bias=bias,
            row_weight=case.row_weight,
            reduction="none",
            **options,
        )
        return rows[peer]

    leaves = [t[peer].clone().requires_grad_() for t in (case.hidden, case.item_weight, case.bias)]
    return fn, leaves


@pytest.mark.parametrize("num_peers", [1, 2, 3])
@pytest.mark.parametrize(
    "options", [{}, {"gamma": 2.0, "alpha": 0.2}, {"beta": 0.3}, {"gamma": 0.5, "alpha": 0.0}]
)
def test_gradcheck_own_rows(num_peers, options):
    case = make_case(
        num_peers,
        num_rows=9,
        dim=3,
        num_items=11,
        per_peer=True,
        bias="peer",
        weights=True,
        ignored=1,
        seed=num_peers,
    )
    for peer in range(num_peers):
        fn, leaves = own_rows(case, peer, **options)
        assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-8)


def test_gradcheck_own_rows_tiled(monkeypatch):
    monkeypatch.setenv("HAIL_TILE_SHAPE", "4,5")
    case = make_case(2, num_rows=10, dim=3, num_items=13, per_peer=True, bias="peer", seed=9)
    fn, leaves = own_rows(case, 1, gamma=0.7)
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gradcheck_reduced_single_peer(reduction):
    # With one peer (or alpha = 1) the loss has no constants: the full gradient is checkable,
    # and it exercises the gradients computed during the forward sweep.
    case = make_case(1, num_rows=9, dim=3, num_items=11, bias="shared", weights=True, ignored=2)
    hidden, weight, bias = case.inputs()

    def fn(h, w, b):
        return hail_ext.med_loss(
            h, w, case.target, bias=b, row_weight=case.row_weight, reduction=reduction
        )

    # gradcheck runs backward twice through one graph: the first takes the gradients the forward
    # computed, the second sweeps again (hail_ext/_ops.py), so the two may differ by rounding.
    assert torch.autograd.gradcheck(
        fn, (hidden, weight, bias), eps=1e-6, atol=1e-8, nondet_tol=1e-13
    )


@pytest.mark.parametrize("num_peers", [2, 3])
@pytest.mark.parametrize("beta", [0.0, 0.25])
def test_forward_gradients_match_backward_sweep(num_peers, beta):
    # "sum" takes the gradients computed in the forward; "none" summed takes the backward
    # operator. Both must give the same numbers.
    case = make_case(
        num_peers, num_rows=40, dim=5, num_items=57, bias="peer", weights=True, ignored=3, seed=11
    )
    _, eager = loss_and_grads(hail_ext.med_loss, case, reduction="sum", beta=beta)

    def summed_rows(*args, **kwargs):
        return hail_ext.med_loss(*args, **kwargs, reduction="none").sum()

    _, swept = loss_and_grads(summed_rows, case, beta=beta)
    for a, b in zip(eager, swept, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
