"""What only the CUDA kernels need checked: the widest templates, half precision with every
option, agreement with the CPU, streams, device-side input checks, opcheck, compile, memory.

The float64-oracle tests of every option and tiling run on the GPU from test_loss_oracle.py
(its `device` fixture; `pytest -m cuda` runs both). Skipped without a CUDA device or without
compiled CUDA kernels (`build_info()["cuda"]`). The reference runs in float64 on the same device
with plain torch ops, so it shares no code with the kernels; tolerances are those of
docs/SPEC.md.
"""

import pytest
import torch

import hail_ext
from loss_cases import (
    assert_close_to_reference,
    check_non_contiguous_inputs,
    loss_and_grads,
    make_case,
    rel_err,
)

HAS_KERNELS = hail_ext.build_info().get("cuda", False)

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    pytest.mark.skipif(not HAS_KERNELS, reason="hail_ext was built without CUDA kernels"),
]


def cuda_case(*args, **kwargs):
    """make_case on the GPU (the random draws stay those of the CPU tests)."""
    return make_case(*args, device="cuda", **kwargs)


@pytest.mark.parametrize("num_peers", [9, 16])
def test_most_peers(num_peers):
    # K from 9 to 16 takes the sweeps' widest template.
    case = cuda_case(num_peers, 30, 8, 257, ignored=2, weights=True, bias="peer", seed=13)
    assert_close_to_reference(case, None, 1e-10)
    assert_close_to_reference(case, torch.float32, 1e-5, beta=0.2, gamma=2.0)


def test_many_peers_and_blocks(monkeypatch):
    # A 1 MB workspace makes the automatic plan tile the items of several row blocks.
    monkeypatch.setenv("HAIL_WORKSPACE_MB", "1")
    case = cuda_case(5, 700, 24, 9_001, bias="peer", per_peer=True, weights=True, ignored=20)
    assert_close_to_reference(case, torch.float32, 1e-5, gamma=1.5, beta=0.1)


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
@pytest.mark.parametrize("num_peers", [2, 3])
def test_half_precision_every_option(tiling, dtype, tol, num_peers):
    # Ignored and zero-weight rows, per-peer tables and bias, truncation, several blocks and
    # tiles. Rows that never had a sweep carry NaN in their state: they must not reach float16's
    # dz scale, which is shared by a block.
    case = cuda_case(num_peers, 60, 16, 700, ignored=7, weights=True, bias="peer", per_peer=True)
    for name in ("hidden", "item_weight", "bias"):
        setattr(case, name, getattr(case, name).to(dtype).double())
    for options in ({}, {"beta": 0.1}, {"reduction": "sum", "gamma": 2.0}):
        assert_close_to_reference(case, dtype, tol, **options)


def test_extreme_logits_match_cpu():
    # A wrong item holding all but ~e^-30 of the mass (checked exactly on the CPU in
    # test_loss_inputs.py), and rows of logits of spread 30: the CPU operator is the reference.
    hidden = torch.zeros(2, 3, 2, dtype=torch.float64)
    hidden[:, :, 0] = 1.0
    hidden[:, 1, :] = torch.tensor([-30.0, 1.0])
    weight = torch.tensor([[0.0, 0.0], [30.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    target = torch.tensor([0, 2, 1])
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        results = {}
        for device in ("cpu", "cuda"):
            h = hidden.to(device, dtype).requires_grad_()
            w = weight.to(device, dtype).requires_grad_()
            loss = hail_ext.med_loss(h, w, target.to(device))
            loss.backward()
            results[device] = [loss.detach().cpu(), h.grad.cpu(), w.grad.cpu()]
        for got, want in zip(results["cuda"], results["cpu"], strict=True):
            assert torch.isfinite(got).all()
            assert rel_err(got, want) < tol


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_inputs_give_nan(bad):
    case = cuda_case(2, 6, 4, 50, seed=15)
    case.hidden[0, 2, 1] = bad
    rows = hail_ext.med_loss(case.hidden, case.item_weight, case.target, reduction="none")
    assert torch.isnan(rows[0, 2])
    assert torch.isfinite(rows[:, [0, 1, 3, 4, 5]]).all()


def test_cpu_and_cuda_agree():
    cpu = make_case(3, 50, 8, 333, bias="peer", weights=True, ignored=4, seed=8)
    gpu = cuda_case(3, 50, 8, 333, bias="peer", weights=True, ignored=4, seed=8)
    for options in ({}, {"beta": 0.2, "gamma": 2.0}, {"reduction": "none"}):
        want, want_grads = loss_and_grads(hail_ext.med_loss, cpu, **options)
        got, got_grads = loss_and_grads(hail_ext.med_loss, gpu, **options)
        assert rel_err(got.cpu(), want) < 1e-12
        for g, w in zip(got_grads, want_grads, strict=True):
            assert rel_err(g.cpu(), w) < 1e-12


def test_peer_permutation_symmetry():
    case = cuda_case(3, 40, 8, 300, per_peer=True, bias="peer", seed=9)
    order = torch.tensor([2, 0, 1], device="cuda")
    rows = hail_ext.med_loss(
        case.hidden, case.item_weight, case.target, bias=case.bias, reduction="none"
    )
    permuted = hail_ext.med_loss(
        case.hidden[order],
        case.item_weight[order],
        case.target,
        bias=case.bias[order],
        reduction="none",
    )
    torch.testing.assert_close(permuted, rows[order], rtol=1e-12, atol=1e-12)
    total = hail_ext.med_loss(
        case.hidden[order],
        case.item_weight[order],
        case.target,
        bias=case.bias[order],
        reduction="sum",
    )
    torch.testing.assert_close(total, rows.sum(), rtol=1e-12, atol=1e-12)


def test_current_stream():
    case = cuda_case(2, 64, 16, 2_000, bias="shared", seed=10)
    want, want_grads = loss_and_grads(hail_ext.med_loss, case, torch.float32)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        # The side stream's copies of the inputs (made in loss_and_grads) finish late: a launch
        # on another stream would read them unwritten.
        torch.cuda._sleep(50_000_000)
        got, got_grads = loss_and_grads(hail_ext.med_loss, case, torch.float32)
    torch.cuda.current_stream().wait_stream(stream)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("target", [0, 1, 2, 10, 4, 5], r"target\[3\] = 10 is outside \[0, 10\)"),
        ("target", [0, 1, -1, 3, -7, 5], r"target\[2\] = -1 is outside"),
        ("row_weight", [1.0, -1.0, 1, 1, 1, 1], r"row_weight\[1\] = -1"),
        ("row_weight", [1.0, 1, float("nan"), 1, 1, 1], r"row_weight\[2\] = nan"),
        ("row_weight", [1.0, 1, 1, float("inf"), 1, 1], r"row_weight\[3\] = inf"),
    ],
)
def test_bad_values_found_on_device(field, value, message):
    case = cuda_case(2, num_rows=6, dim=4, num_items=10, dtype=torch.float32)
    dtype = torch.int64 if field == "target" else torch.float32
    setattr(case, field, torch.tensor(value, dtype=dtype, device="cuda"))
    with pytest.raises(ValueError, match=message):
        hail_ext.med_loss(case.hidden, case.item_weight, case.target, row_weight=case.row_weight)


def test_too_many_peers_names_the_alternative():
    case = cuda_case(17, num_rows=4, dim=2, num_items=5, dtype=torch.float32)
    with pytest.raises(ValueError, match="at most 16 peers"):
        hail_ext.med_loss(case.hidden, case.item_weight, case.target)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("zero", ["ignored", "weights", "empty"])
def test_batches_without_loss(reduction, zero):
    num_rows = 0 if zero == "empty" else 5
    case = cuda_case(2, num_rows=num_rows, dim=3, num_items=7, bias="shared", dtype=torch.float32)
    if zero == "ignored":
        case.target[:] = -100
    elif zero == "weights":
        case.row_weight = torch.zeros(5, device="cuda")
    hidden, weight, bias = case.inputs()
    loss = hail_ext.med_loss(
        hidden,
        weight,
        case.target,
        bias=bias,
        row_weight=case.row_weight,
        reduction=reduction,
        beta=0.5,
    )
    assert torch.all(loss == 0)
    loss.sum().backward()
    for t in (hidden, weight, bias):
        assert torch.all(t.grad == 0) and not torch.isnan(t.grad).any()


def test_non_contiguous_inputs():
    check_non_contiguous_inputs("cuda")


def op_args(case, reduction, compute_grad, beta=0.0):
    return (
        case.hidden,
        case.item_weight,
        case.target,
        case.bias,
        case.row_weight,
        -100,
        0.4,
        1.5,
        beta,
        reduction,
        compute_grad,
    )


@pytest.mark.parametrize("reduction", [0, 1, 2])
@pytest.mark.parametrize("compute_grad", [False, True])
def test_opcheck_forward(reduction, compute_grad):
    case = cuda_case(
        2, num_rows=7, dim=3, num_items=9, bias="peer", weights=True, ignored=1, dtype=torch.float32
    )
    case.hidden, case.item_weight, case.bias = case.inputs()
    torch.library.opcheck(
        torch.ops.hail_ext.med_forward.default, op_args(case, reduction, compute_grad, beta=0.2)
    )


def test_opcheck_backward():
    case = cuda_case(3, num_rows=7, dim=3, num_items=9, bias="shared", dtype=torch.float32)
    out = torch.ops.hail_ext.med_forward(*op_args(case, 0, False))
    grad_rows = torch.randn(3, 7, device="cuda")
    args = (
        grad_rows,
        case.hidden,
        case.item_weight,
        case.target,
        case.bias,
        None,
        out[3],
        out[4],
        out[5],
        -100,
        0.4,
        1.5,
    )
    torch.library.opcheck(torch.ops.hail_ext.med_backward.default, args)


def test_compile_fullgraph():
    case = cuda_case(2, 64, 16, 500, bias="shared", dtype=torch.float32, seed=11)

    @torch.compile(fullgraph=True)
    def step(hidden, weight, bias):
        return hail_ext.med_loss(hidden, weight, case.target, bias=bias, gamma=2.0) * 3.0

    # Compiled against eager, loss and gradients; eager is checked against float64 elsewhere.
    results = []
    for fn in (step, lambda *a: hail_ext.med_loss(*a[:2], case.target, bias=a[2], gamma=2.0) * 3):
        hidden, weight, bias = case.inputs()
        loss = fn(hidden, weight, bias)
        loss.backward()
        results.append([loss.detach(), hidden.grad, weight.grad, bias.grad])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want)


def test_memory_flat_in_items():
    # K=2, N=4096, d=64, V=300,000 in float32: one copy of the logits would be 9.8 GB; the fused
    # loss holds a workspace (512 MB by default) and [K, N] statistics beyond inputs and grads.
    gen = torch.Generator(device="cuda").manual_seed(0)
    hidden = torch.randn(2, 4096, 64, device="cuda", generator=gen, requires_grad=True)
    weight = torch.randn(300_000, 64, device="cuda", generator=gen).div_(8).requires_grad_()
    target = torch.randint(0, 300_000, (4096,), device="cuda", generator=gen)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    hail_ext.med_loss(hidden, weight, target).backward()
    torch.cuda.synchronize()
    grads = hidden.numel() * 4 + weight.numel() * 4
    extra = torch.cuda.max_memory_allocated() - before - grads
    assert extra < 1.5 * 2**30, f"{extra / 2**20:.0f} MB beyond inputs and gradients"
