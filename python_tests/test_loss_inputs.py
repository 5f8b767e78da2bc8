"""Bad input, degenerate batches, dtypes and layouts."""

import math

import pytest
import torch

import hail_ext
from loss_cases import check_non_contiguous_inputs, make_case

LOSSES = [hail_ext.med_loss, hail_ext.reference.med_loss]


def good():
    return make_case(2, num_rows=6, dim=4, num_items=10, dtype=torch.float32)


def call(fn, case, **kwargs):
    args = {"bias": case.bias, "row_weight": case.row_weight, **kwargs}
    return fn(case.hidden, case.item_weight, case.target, **args)


@pytest.mark.parametrize("fn", LOSSES)
@pytest.mark.parametrize(
    "field,value,message",
    [
        ("hidden", torch.zeros(6, 4), r"hidden must be \[K, N, d\]"),
        ("hidden", torch.zeros(2, 6, 4, dtype=torch.int64), "hidden must be float16"),
        ("item_weight", torch.zeros(10, 5), "disagree on d"),
        ("item_weight", torch.zeros(3, 10, 4), r"item_weight must be \[V, d\] or \[K, V, d\]"),
        ("item_weight", torch.zeros(0, 4), "empty catalogue"),
        ("item_weight", torch.zeros(10, 4, dtype=torch.float64), "item_weight has dtype"),
        ("target", torch.zeros(5, dtype=torch.int64), r"target must be \[N\]"),
        ("target", torch.zeros(6, dtype=torch.int32), "target must be int64"),
        ("target", torch.tensor([0, 1, 2, 10, 4, 5]), r"target\[3\] = 10 is outside \[0, 10\)"),
        ("target", torch.tensor([0, 1, -1, 3, 4, 5]), r"target\[2\] = -1 is outside"),
        ("bias", torch.zeros(9), r"bias must be \[V\] or \[K, V\]"),
        ("row_weight", torch.ones(5), r"row_weight must be \[N\]"),
        ("row_weight", torch.tensor([1.0, -1.0, 1, 1, 1, 1]), r"row_weight\[1\] = -1"),
        ("row_weight", torch.tensor([1.0, 1, math.nan, 1, 1, 1]), r"row_weight\[2\] = nan"),
    ],
)
def test_bad_tensors(fn, field, value, message):
    case = good()
    setattr(case, field, value)
    with pytest.raises(ValueError, match=message):
        call(fn, case)


@pytest.mark.parametrize("fn", LOSSES)
@pytest.mark.parametrize(
    "option,value,message",
    [
        ("gamma", 0.0, "gamma must be"),
        ("gamma", -1.0, "gamma must be"),
        ("alpha", 1.5, r"alpha must lie in \[0, 1\]"),
        ("alpha", math.nan, "alpha must"),
        ("beta", 1.0, r"beta must lie in \[0, 1\)"),
        ("beta", -0.1, "beta must"),
        ("reduction", "avg", "reduction must be one of"),
        ("ignore_index", 1.5, "ignore_index"),
    ],
)
def test_bad_options(fn, option, value, message):
    with pytest.raises(ValueError, match=message):
        call(fn, good(), **{option: value})


def test_hidden_as_sequence_and_mixed_shapes():
    case = good()
    listed = hail_ext.med_loss(list(case.hidden), case.item_weight, case.target)
    torch.testing.assert_close(listed, call(hail_ext.med_loss, case))
    with pytest.raises(ValueError, match="must all be"):
        hail_ext.med_loss([case.hidden[0], case.hidden[1][:3]], case.item_weight, case.target)


def test_operator_checks_its_own_arguments():
    # Callers that reach the operator directly get the same kind of error.
    case = good()
    with pytest.raises(ValueError, match="gamma must be > 0"):
        torch.ops.hail_ext.med_forward(
            case.hidden, case.item_weight, case.target, None, None, -100, 0.5, 0.0, 0.0, 1, False
        )
    with pytest.raises(ValueError, match="target"):
        torch.ops.hail_ext.med_forward(
            case.hidden,
            case.item_weight,
            case.target + 100,
            None,
            None,
            -100,
            0.5,
            1.0,
            0.0,
            1,
            False,
        )


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("zero", ["ignored", "weights", "empty"])
def test_batches_without_loss(reduction, zero):
    case = make_case(
        2,
        num_rows=0 if zero == "empty" else 5,
        dim=3,
        num_items=7,
        bias="shared",
        dtype=torch.float32,
    )
    if zero == "ignored":
        case.target[:] = -100
    elif zero == "weights":
        case.row_weight = torch.zeros(5)
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
    check_non_contiguous_inputs("cpu")


def test_inputs_without_requires_grad_get_no_grad():
    case = make_case(2, dim=4, bias="shared", dtype=torch.float32)
    hidden = case.hidden.clone().requires_grad_()
    weight, bias = case.item_weight.clone(), case.bias.clone()
    hail_ext.med_loss(hidden, weight, case.target, bias=bias).backward()
    assert hidden.grad is not None and weight.grad is None and bias.grad is None
    with torch.no_grad():
        assert not hail_ext.med_loss(hidden, weight, case.target).requires_grad


def test_stats_for_logging():
    case = make_case(3, num_rows=50, ignored=5, weights=True, seed=4)
    loss, stats = hail_ext.med_loss_with_stats(
        case.hidden, case.item_weight, case.target, row_weight=case.row_weight, beta=0.2
    )
    torch.testing.assert_close(loss, call(hail_ext.med_loss, case, beta=0.2))
    valid = (case.target != -100) & (case.row_weight > 0)
    logits = case.hidden @ case.item_weight.T
    ce = torch.logsumexp(logits, -1) - logits.gather(
        2, case.target.clamp_min(0).expand(3, -1).unsqueeze(-1)
    ).squeeze(-1)
    w = case.row_weight * valid
    torch.testing.assert_close(stats.ce, (ce * w).sum(-1) / w.sum())
    assert stats.ce.shape == stats.med.shape == (3,) and not stats.ce.requires_grad
    assert 0 < int(stats.rows_kept) < int(valid.sum())
    alpha = 0.5  # default: the loss is the weighted mean of alpha CE + (1 - alpha) MED
    assert torch.isfinite(stats.med).all() and (stats.med != 0).all()
    assert float(alpha * stats.ce.sum() + (1 - alpha) * stats.med.sum()) > 0


def test_dominant_wrong_item_stays_finite():
    # A wrong item holds all but ~e^-30 of the mass: neither float32 nor float64 can write p
    # next to 1 - p, yet the loss matches an exact evaluation and the gradient stays finite.
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 50
    hidden = torch.zeros(2, 1, 2, dtype=torch.float64)
    hidden[:, 0, 0] = 1.0
    weight = torch.tensor([[0.0, 0.0], [30.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    target = torch.tensor([0])

    total = 2 + mp.e**30  # logits [0, 30, 0] for both peers, target item 0
    p = [1 / total, mp.e**30 / total, 1 / total]
    ce = mp.log(total)
    med = -((1 - p[0]) * mp.log(p[0]) + p[1] * mp.log(1 - p[1]) + p[2] * mp.log(1 - p[2]))
    exact = float(2 * (0.5 * ce + 0.5 * med))

    grads = {}
    for dtype in (torch.float64, torch.float32):
        h = hidden.to(dtype).clone().requires_grad_()
        loss = hail_ext.med_loss(h, weight.to(dtype), target)
        tol = 1e-12 if dtype == torch.float64 else 1e-6
        assert abs(float(loss.detach()) - exact) / exact < tol
        loss.backward()
        assert torch.isfinite(h.grad).all()
        grads[dtype] = h.grad.double()
    torch.testing.assert_close(grads[torch.float32], grads[torch.float64], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_inputs_give_nan_or_error(bad):
    case = good()
    case.hidden[0, 2, 1] = bad
    loss = call(hail_ext.med_loss, case, reduction="none")
    assert torch.isnan(loss[0, 2])
    # The truncation must rank rows: a NaN cross-entropy is an error, an infinite one is ranked
    # and the loss comes out NaN. Never a finite number.
    try:
        loss = call(hail_ext.med_loss, case, beta=0.5)
    except ValueError as error:
        assert "NaN" in str(error)
    else:
        assert torch.isnan(loss)
