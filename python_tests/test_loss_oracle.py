"""The fused loss against the float64 reference, for every option and tiling path."""

import pytest
import torch

import hail_ext
from loss_cases import assert_close_to_reference, loss_and_grads, make_case, rel_err

# (rows per block, items per tile): one tile per block; several blocks and tiles with ragged
# ends; one row at a time.
TILINGS = [None, "16,64", "1,7"]


@pytest.fixture(params=TILINGS, ids=["auto", "tiled", "thin"])
def tiling(request, monkeypatch):
    if request.param is not None:
        monkeypatch.setenv("HAIL_TILE_SHAPE", request.param)
    return request.param


@pytest.mark.parametrize("num_peers", [1, 2, 3, 4])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_peers_and_reductions(tiling, num_peers, reduction):
    case = make_case(num_peers, ignored=3, bias="shared")
    assert_close_to_reference(case, None, 1e-10, reduction=reduction)
    assert_close_to_reference(case, torch.float32, 1e-5, reduction=reduction)


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_alpha_gamma(tiling, alpha, gamma):
    case = make_case(3, seed=1)
    assert_close_to_reference(case, None, 1e-10, alpha=alpha, gamma=gamma)


@pytest.mark.parametrize("beta", [0.05, 0.2, 0.5, 0.9])
@pytest.mark.parametrize("num_peers", [1, 2, 3])
def test_truncation(tiling, beta, num_peers):
    case = make_case(num_peers, num_rows=41, ignored=4, weights=True, seed=2)
    for reduction in ("mean", "none"):
        assert_close_to_reference(case, None, 1e-10, beta=beta, reduction=reduction)


@pytest.mark.parametrize("bias", [None, "shared", "peer"])
@pytest.mark.parametrize("per_peer", [False, True])
def test_tables_and_bias(tiling, bias, per_peer):
    case = make_case(2, bias=bias, per_peer=per_peer, weights=True, seed=3)
    assert_close_to_reference(case, None, 1e-10)
    assert_close_to_reference(case, torch.float32, 1e-5)


def test_non_unit_upstream_gradient(tiling):
    case = make_case(3, ignored=2, weights=True, bias="peer", seed=4)
    upstream = torch.randn(3, 37, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert_close_to_reference(case, None, 1e-10, upstream=upstream, reduction="none")
    for reduction in ("mean", "sum"):
        assert_close_to_reference(
            case, None, 1e-10, upstream=torch.tensor(-2.5), reduction=reduction
        )


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_retained_graph_backward_repeats(tiling, reduction):
    # The first backward hands its precomputed gradients on without a copy; later ones through a
    # retained graph must not see them changed, even when the caller edits .grad in place.
    case = make_case(2, ignored=2, bias="shared", seed=8)
    want, want_grads = loss_and_grads(
        hail_ext.reference.med_loss, case, torch.float64, reduction=reduction
    )
    hidden, weight, bias = case.inputs()
    loss = hail_ext.med_loss(hidden, weight, case.target, bias=bias, reduction=reduction)
    assert rel_err(loss.detach(), want) < 1e-10
    total = 0.0
    for upstream in (1.0, 0.0, -2.5, 1.0):
        loss.backward(torch.tensor(upstream, dtype=loss.dtype), retain_graph=True)
        total += upstream
        for leaf, w in zip((hidden, weight, bias), want_grads, strict=True):
            assert rel_err(leaf.grad, total * w) < 1e-10
            leaf.grad.mul_(0.5)  # an in-place edit, as gradient clipping makes
        total *= 0.5


BF16_PRODUCTS = hail_ext.build_info().get("cpu_bf16_products", False)


@pytest.mark.skipif(not BF16_PRODUCTS, reason="this CPU's micro-kernels do not take bfloat16")
@pytest.mark.parametrize(
    "shape", [(3, 41, 7, 333), (2, 130, 100, 1031), (1, 5, 64, 64), (2, 50, 24, 9001)]
)
def test_bfloat16_products(tiling, shape, monkeypatch):
    # bfloat16 tile products (AMX): ragged item panels, odd d, a second column panel (d = 100),
    # a table packed in several chunks (V = 9001), tiles starting on odd items ("thin"), per-peer
    # tables and bias. Against the float64 reference, and against the float32 products, which
    # differ only by dz's rounding.
    case = make_case(*shape, ignored=3, weights=True, bias="peer", per_peer=True, seed=16)
    for name in ("hidden", "item_weight", "bias"):
        setattr(case, name, getattr(case, name).to(torch.bfloat16).double())
    assert_close_to_reference(case, torch.bfloat16, 1e-2, beta=0.1)
    loss, grads = loss_and_grads(hail_ext.med_loss, case, torch.bfloat16)
    monkeypatch.setenv("HAIL_CPU_BF16_PRODUCTS", "0")
    loss_f32, grads_f32 = loss_and_grads(hail_ext.med_loss, case, torch.bfloat16)
    # Logits in float32 either way: the losses are at most a bfloat16 rounding apart.
    assert rel_err(loss, loss_f32) <= 2**-8
    for got, want in zip(grads, grads_f32, strict=True):
        assert rel_err(got, want) < 1e-2


def test_ignore_index_minus_one(tiling):
    # -1 is also the arg-max sentinel of rows never swept.
    case = make_case(2, 40, 8, 300, ignored=6, weights=True, bias="shared", seed=14)
    case.target[case.target == -100] = -1
    assert_close_to_reference(case, None, 1e-10, ignore_index=-1)
    assert_close_to_reference(case, torch.float32, 1e-5, ignore_index=-1, beta=0.2)


@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 3, 1), (130, 7, 1031), (64, 64, 4096)])
def test_odd_sizes(shape):
    num_rows, dim, num_items = shape
    case = make_case(2, num_rows, dim, num_items, ignored=num_rows // 4, seed=5)
    assert_close_to_reference(case, torch.float32, 1e-5)


@pytest.mark.parametrize("scale", [3.0, 10.0])
def test_peaked_distributions(tiling, scale):
    # Large logits: most rows put almost all mass on one item, often a wrong one.
    case = make_case(2, scale=scale, seed=6)
    assert_close_to_reference(case, None, 1e-9)
    assert_close_to_reference(case, torch.float32, 1e-5 * scale)


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
def test_half_precision(dtype, tol):
    # Inputs rounded to the half type first, so the error measured is the loss's own.
    case = make_case(2, 64, 32, 1000, ignored=5, bias="shared", seed=7)
    rounded = make_case(2, 64, 32, 1000, ignored=5, bias="shared", seed=7)
    for name in ("hidden", "item_weight", "bias"):
        setattr(rounded, name, getattr(case, name).to(dtype).double())
    assert_close_to_reference(rounded, dtype, tol)
