"""Properties over random shapes and options (hypothesis)."""

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import hail_ext
from loss_cases import assert_close_to_reference, loss_and_grads, make_case

shapes = st.tuples(st.integers(1, 4), st.integers(0, 40), st.integers(1, 12), st.integers(1, 300))
options = st.fixed_dictionaries(
    {
        "alpha": st.floats(0.0, 1.0),
        "gamma": st.floats(0.1, 3.0),
        "beta": st.sampled_from([0.0, 0.1, 0.5]),
        "reduction": st.sampled_from(["mean", "sum", "none"]),
    }
)


@settings(max_examples=60, deadline=None)
@given(
    shape=shapes,
    opts=options,
    bias=st.sampled_from([None, "shared", "peer"]),
    per_peer=st.booleans(),
    weights=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_matches_reference(shape, opts, bias, per_peer, weights, seed):
    num_peers, num_rows, dim, num_items = shape
    case = make_case(
        num_peers,
        num_rows,
        dim,
        num_items,
        bias=bias,
        per_peer=per_peer,
        weights=weights,
        ignored=num_rows // 5,
        seed=seed,
    )
    assert_close_to_reference(case, None, 1e-9, **opts)


@settings(max_examples=30, deadline=None)
@given(shape=shapes, opts=options, seed=st.integers(0, 2**16))
def test_peer_permutation_symmetry(shape, opts, seed):
    num_peers, num_rows, dim, num_items = shape
    case = make_case(
        num_peers,
        num_rows,
        dim,
        num_items,
        per_peer=True,
        bias="peer",
        ignored=num_rows // 5,
        seed=seed,
    )
    perm = torch.randperm(num_peers, generator=torch.Generator().manual_seed(seed))
    rows = hail_ext.med_loss(
        case.hidden, case.item_weight, case.target, bias=case.bias, **{**opts, "reduction": "none"}
    )
    permuted = hail_ext.med_loss(
        case.hidden[perm],
        case.item_weight[perm],
        case.target,
        bias=case.bias[perm],
        **{**opts, "reduction": "none"},
    )
    torch.testing.assert_close(permuted, rows[perm], rtol=1e-12, atol=1e-12)
    total = hail_ext.med_loss(
        case.hidden[perm],
        case.item_weight[perm],
        case.target,
        bias=case.bias[perm],
        **{**opts, "reduction": "sum"},
    )
    torch.testing.assert_close(total, rows.sum(), rtol=1e-12, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    shape=shapes,
    reduction=st.sampled_from(["mean", "sum", "none"]),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_single_peer_is_cross_entropy(shape, reduction, bias, seed):
    _, num_rows, dim, num_items = shape
    case = make_case(
        1,
        num_rows,
        dim,
        num_items,
        bias="shared" if bias else None,
        ignored=num_rows // 4,
        seed=seed,
        dtype=torch.float32,
    )

    def torch_ce(hidden, weight, target, bias=None, row_weight=None, reduction="mean"):
        logits = hidden[0] @ weight.T + (0 if bias is None else bias)
        return F.cross_entropy(logits, target, reduction=reduction)

    def fused(hidden, weight, target, bias=None, row_weight=None, reduction="mean"):
        return hail_ext.linear_cross_entropy(
            hidden[0], weight, target, bias=bias, reduction=reduction
        )

    got, got_grads = loss_and_grads(fused, case, reduction=reduction)
    want, want_grads = loss_and_grads(torch_ce, case, reduction=reduction)
    if num_rows > 0 and bool((case.target != -100).any()) or reduction != "mean":
        torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=2e-5, atol=2e-6)
