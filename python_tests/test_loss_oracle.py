"""The fused loss against the float64 reference, for every option and tiling path, on the CPU
and (where there is one) the GPU; the fixtures `device` and `tiling` are in conftest.py."""

import pytest
import torch

import hail_ext
from loss_cases import assert_close_to_reference, loss_and_grads, make_case, rel_err


@pytest.mark.parametrize("num_peers", [1, 2, 3, 4])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_peers_and_reductions(device, tiling, num_peers, reduction):
    case = make_case(num_peers, ignored=3, bias="shared", device=device)
    assert_close_to_reference(case, None, 1e-10, reduction=reduction)
    assert_close_to_reference(case, torch.float32, 1e-5, reduction=reduction)


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_alpha_gamma(device, tiling, alpha, gamma):
    case = make_case(3, seed=1, device=device)
    assert_close_to_reference(case, None, 1e-10, alpha=alpha, gamma=gamma)
    assert_close_to_reference(case, torch.float32, 1e-5, alpha=alpha, gamma=gamma)


@pytest.mark.parametrize("beta", [0.05, 0.2, 0.5, 0.9])
@pytest.mark.parametrize("num_peers", [1, 2, 3])
def test_truncation(device, tiling, beta, num_peers):
    case = make_case(num_peers, num_rows=41, ignored=4, weights=True, seed=2, device=device)
    for reduction in ("mean", "none"):
        assert_close_to_reference(case, None, 1e-10, beta=beta, reduction=reduction)
        assert_close_to_reference(case, torch.float32, 1e-5, beta=beta, reduction=reduction)


@pytest.mark.parametrize("bias", [None, "shared", "peer"])
@pytest.mark.parametrize("per_peer", [False, True])
def test_tables_and_bias(device, tiling, bias, per_peer):
    case = make_case(2, bias=bias, per_peer=per_peer, weights=True, seed=3, device=device)
    assert_close_to_reference(case, None, 1e-10)
    assert_close_to_reference(case, torch.float32, 1e-5)


def test_non_unit_upstream_gradient(device, tiling):
    case = make_case(3, ignored=2, weights=True, bias="peer", seed=4, device=device)
    gen = torch.Generator().manual_seed(0)
    upstream = torch.randn(3, 37, generator=gen, dtype=torch.float64).to(device)
    assert_close_to_reference(case, None, 1e-10, upstream=upstream, reduction="none")
    for reduction in ("mean", "sum"):
        assert_close_to_reference(
            case, None, 1e-10, upstream=torch.tensor(-2.5, device=device), reduction=reduction
        )


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_retained_graph_backward_repeats(device, tiling, reduction):
    # The first backward hands its precomputed gradients on without a copy; later ones through a
    # retained graph must not see them changed, even when the caller edits .grad in place.
    case = make_case(2, ignored=2, bias="shared", seed=8, device=device)
    want, want_grads = loss_and_grads(
        hail_ext.reference.med_loss, case, torch.float64, reduction=reduction
    )
    hidden, weight, bias = case.inputs()
    loss = hail_ext.med_loss(hidden, weight, case.target, bias=bias, reduction=reduction)
    assert rel_err(loss.detach(), want) < 1e-10
    total = 0.0
    for upstream in (1.0, 0.0, -2.5, 1.0):
        loss.backward(torch.tensor(upstream, dtype=loss.dtype, device=device), retain_graph=True)
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


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            return {f for line in info if line.startswith("flags") for f in line.split()[2:]}
    except OSError:
        return set()


@pytest.mark.skipif("amx_bf16" not in _cpu_flags(), reason="this CPU has no AMX")
def test_bfloat16_products_on_where_the_cpu_has_amx():
    # usable() checks libtorch's packing against its own; a check gone wrong would quietly turn
    # the bfloat16 products off (and test_bfloat16_products would skip), so say it here.
    assert BF16_PRODUCTS


def test_bfloat16_without_mkldnn():
    # torch.backends.mkldnn off takes libtorch's micro-kernels away mid-process: the loss must
    # fall back to float32 products, whatever an earlier call found.
    case = make_case(2, 30, 16, 200, ignored=2, seed=17)
    for name in ("hidden", "item_weight"):
        setattr(case, name, getattr(case, name).to(torch.bfloat16).double())
    loss_on, grads_on = loss_and_grads(hail_ext.med_loss, case, torch.bfloat16)
    was_enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False  # (mkldnn.flags() also sets TF32, which warns)
    try:
        loss_off, grads_off = loss_and_grads(hail_ext.med_loss, case, torch.bfloat16)
    finally:
        torch.backends.mkldnn.enabled = was_enabled
    assert rel_err(loss_off, loss_on) <= 2**-8
    for got, want in zip(grads_off, grads_on, strict=True):
        assert rel_err(got, want) < 1e-2


@pytest.mark.parametrize("dtype", [None, torch.float32, torch.float16])
def test_ignore_index_minus_one(device, tiling, dtype):
    # -1 is also the arg-max sentinel of rows never swept.
    case = make_case(2, 40, 8, 300, ignored=6, weights=True, bias="shared", seed=14, device=device)
    case.target[case.target == -100] = -1
    if dtype == torch.float16:
        for name in ("hidden", "item_weight", "bias"):
            setattr(case, name, getattr(case, name).to(dtype).double())
    tol = {None: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3}[dtype]
    assert_close_to_reference(case, dtype, tol, ignore_index=-1)
    assert_close_to_reference(case, dtype, tol, ignore_index=-1, beta=0.2)


@pytest.mark.parametrize(
    "shape", [(1, 1, 1), (5, 3, 1), (130, 7, 1031), (64, 64, 4096), (1000, 48, 50_021)]
)
def test_odd_sizes(device, shape):
    num_rows, dim, num_items = shape
    case = make_case(2, num_rows, dim, num_items, ignored=num_rows // 4, seed=5, device=device)
    assert_close_to_reference(case, torch.float32, 1e-5)


@pytest.mark.parametrize("scale", [3.0, 10.0])
def test_peaked_distributions(device, tiling, scale):
    # Large logits: most rows put almost all mass on one item, often a wrong one.
    case = make_case(2, scale=scale, seed=6, device=device)
    assert_close_to_reference(case, None, 1e-9)
    assert_close_to_reference(case, torch.float32, 1e-5 * scale)


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
@pytest.mark.parametrize("num_peers", [1, 2])
def test_half_precision(device, dtype, tol, num_peers):
    # Inputs rounded to the half type first, so the error measured is the loss's own: float32
    # logits and sums (and, where the products take the half type, dz rounded to it).
    case = make_case(num_peers, 300, 64, 5_000, ignored=5, bias="shared", seed=7, device=device)
    for name in ("hidden", "item_weight", "bias"):
        setattr(case, name, getattr(case, name).to(dtype).double())
    assert_close_to_reference(case, dtype, tol)
    assert_close_to_reference(case, dtype, tol, reduction="none")
