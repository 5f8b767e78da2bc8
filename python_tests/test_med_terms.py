"""MED with one term left out (hail_ext/train/med_terms.py) against a float64 evaluation."""

import pytest
import torch

import hail_ext
from hail_ext.train.config import TrainConfig
from hail_ext.train.med_terms import med_terms_loss
from loss_cases import make_case, rel_err


def by_hand(case, terms, alpha, gamma):
    """The loss with `terms` of MED, written out from docs/SPEC.md's definition in float64."""
    hidden = case.hidden.clone().requires_grad_()
    weight = case.item_weight.clone().requires_grad_()
    logits = hidden @ weight.T  # [K, N, V]
    logp = logits.log_softmax(-1)
    q = logp.detach().exp()
    num_peers, num_rows, _ = logits.shape
    onehot = torch.nn.functional.one_hot(case.target, logits.shape[-1]).bool()

    ce = -logp[:, onehot]  # [K, N]
    miss = (1 - q[:, onehot]) ** gamma
    coef_a = (miss.sum(0) - miss) / (num_peers - 1)
    mass = q**gamma
    coef_c = ((mass.sum(0) - mass) / (num_peers - 1)).masked_fill(onehot, 0.0)
    push = -(coef_c * torch.log1p(-logp.exp())).sum(-1)

    med = {"both": coef_a * ce + push, "target": coef_a * ce, "push": push}[terms]
    loss = (alpha * ce + (1 - alpha) * med).sum() / num_rows
    loss.backward()
    return loss.detach(), hidden.grad, weight.grad


@pytest.mark.parametrize("terms", ["both", "target", "push"])
@pytest.mark.parametrize("num_peers,alpha,gamma", [(2, 0.5, 1.0), (3, 0.2, 2.0)])
def test_terms_match_the_definition(terms, num_peers, alpha, gamma):
    case = make_case(num_peers, num_rows=23, dim=8, num_items=57, scale=2.0, seed=12)
    want, want_hidden, want_weight = by_hand(case, terms, alpha, gamma)

    hidden, weight, _ = case.inputs()
    loss, _ = med_terms_loss(terms)(hidden, weight, case.target, alpha=alpha, gamma=gamma)
    loss.backward()
    assert rel_err(loss.detach(), want) < 1e-10
    assert rel_err(hidden.grad, want_hidden) < 1e-10
    assert rel_err(weight.grad, want_weight) < 1e-10


def test_the_terms_differ_and_one_peer_is_cross_entropy():
    case = make_case(2, num_rows=23, dim=8, num_items=57, scale=2.0, seed=13)
    hidden, weight, _ = case.inputs(requires_grad=False)
    losses = {
        t: float(med_terms_loss(t)(hidden, weight, case.target)[0])
        for t in ("both", "target", "push")
    }
    assert len(set(losses.values())) == 3

    one = hidden[:1]
    for terms in ("target", "push"):
        loss, _ = med_terms_loss(terms)(one, weight, case.target)
        assert rel_err(loss, hail_ext.linear_cross_entropy(one[0], weight, case.target)) < 1e-12


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="med_terms must be one of"):
        med_terms_loss("neither")
    with pytest.raises(ValueError, match="med_terms must be one of"):
        TrainConfig(med_terms="neither")
    with pytest.raises(ValueError, match="needs beta = 0"):
        TrainConfig(med_terms="push", beta=0.1)
