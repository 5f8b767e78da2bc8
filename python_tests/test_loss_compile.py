"""The operators under torch.library.opcheck and torch.compile."""

import pytest
import torch

import hail_ext
from loss_cases import make_case

pytestmark = pytest.mark.skipif(hail_ext._C is None, reason="extension not built")


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
@pytest.mark.parametrize("bias", [None, "peer"])
def test_opcheck_forward(reduction, compute_grad, bias):
    case = make_case(
        2, num_rows=7, dim=3, num_items=9, bias=bias, weights=True, ignored=1, dtype=torch.float32
    )
    hidden, weight, bias_t = case.inputs()
    case.hidden, case.item_weight, case.bias = hidden, weight, bias_t
    torch.library.opcheck(
        torch.ops.hail_ext.med_forward.default, op_args(case, reduction, compute_grad, beta=0.2)
    )


def test_opcheck_backward():
    case = make_case(3, num_rows=7, dim=3, num_items=9, bias="shared", dtype=torch.float32)
    out = torch.ops.hail_ext.med_forward(*op_args(case, 0, False))
    kept, saved, amax = out[3], out[4], out[5]
    grad_rows = torch.randn(3, 7)
    args = (
        grad_rows,
        case.hidden,
        case.item_weight,
        case.target,
        case.bias,
        None,
        kept,
        saved,
        amax,
        -100,
        0.4,
        1.5,
    )
    torch.library.opcheck(torch.ops.hail_ext.med_backward.default, args)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_compile_fullgraph(reduction):
    case = make_case(2, num_rows=33, dim=8, num_items=50, bias="shared", dtype=torch.float32)

    def step(hidden, weight, bias, target):
        # Something before and after the loss, so that it sits inside a real graph.
        loss = hail_ext.med_loss(
            torch.tanh(hidden), weight, target, bias=bias, reduction=reduction, beta=0.1
        )
        return loss.sum() * 2.0

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    hidden, weight, bias = case.inputs()
    got = compiled(hidden, weight, bias, case.target)
    got.backward()
    h2, w2, b2 = case.inputs()
    want = step(h2, w2, b2, case.target)
    want.backward()
    torch.testing.assert_close(got, want)
    for a, b in ((hidden, h2), (weight, w2), (bias, b2)):
        torch.testing.assert_close(a.grad, b.grad)


def test_double_backward_is_refused():
    case = make_case(2, num_rows=5, dim=3, num_items=7, dtype=torch.float32)
    hidden, weight, _ = case.inputs()
    loss = hail_ext.med_loss(hidden, weight, case.target)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(loss, hidden, create_graph=True)
