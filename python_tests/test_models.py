"""Encoders and peers: shapes, causality, padding, seeds, shared or separate item tables."""

import pytest
import torch

import hail_ext
from hail_ext.models.peers import ENCODERS, Peers

NUM_ITEMS, DIM, MAX_LEN = 23, 8, 7


def _peers(model, **kw):
    options = {"num_peers": 2, "dim": DIM, "max_len": MAX_LEN, "seed": 1, **kw}
    return Peers(model, NUM_ITEMS, **options).eval()


def _items(batch=3, length=MAX_LEN, pad=2):
    items = torch.randint(
        1, NUM_ITEMS + 1, (batch, length), generator=torch.Generator().manual_seed(0)
    )
    items[:, :pad] = 0
    return items


@pytest.mark.parametrize("model", sorted(ENCODERS))
def test_encoders_map_items_to_hidden_states(model):
    peers = _peers(model)
    hidden = peers(_items())
    assert hidden.shape == (2, 3, MAX_LEN, DIM)
    assert torch.isfinite(hidden).all()


@pytest.mark.parametrize("model", sorted(ENCODERS))
def test_only_bert4rec_looks_ahead(model):
    peers = _peers(model)
    items = _items()
    changed = items.clone()
    changed[:, -1] = (changed[:, -1] % NUM_ITEMS) + 1
    before, after = peers(items), peers(changed)
    earlier_moved = not torch.allclose(before[:, :, :-1], after[:, :, :-1])
    assert earlier_moved == (model == "bert4rec")
    assert not torch.allclose(before[:, :, -1], after[:, :, -1])


@pytest.mark.parametrize("model", ["sasrec", "bert4rec"])
def test_more_left_padding_changes_nothing(model):
    peers = _peers(model)
    items = _items(length=4, pad=0)
    padded = torch.cat([torch.zeros(3, 3, dtype=torch.long), items], dim=1)
    torch.testing.assert_close(peers(items), peers(padded)[:, :, 3:])


def test_peers_differ_and_seeds_reproduce():
    first, again = _peers("sasrec"), _peers("sasrec")
    other = _peers("sasrec", seed=2)
    hidden = first(_items())
    torch.testing.assert_close(hidden, again(_items()))
    assert not torch.allclose(hidden[0], hidden[1])
    assert not torch.allclose(hidden, other(_items()))


def test_shared_table_by_default_and_one_each_as_option():
    shared = _peers("sasrec")
    assert shared.encoders[0].item_embedding is shared.encoders[1].item_embedding
    weight, bias = shared.output_layer()
    assert weight.shape == (NUM_ITEMS, DIM) and bias.shape == (NUM_ITEMS,)
    # The output layer is the input table without the padding row: class c is item c + 1.
    torch.testing.assert_close(weight, shared.tables[0].weight[1:])

    separate = _peers("bert4rec", shared_items=False, bias=False)
    assert separate.encoders[0].item_embedding is not separate.encoders[1].item_embedding
    weight, bias = separate.output_layer()
    assert weight.shape == (2, NUM_ITEMS, DIM) and bias is None
    assert separate.mask_token == NUM_ITEMS + 1
    assert separate.tables[0].weight.shape[0] == NUM_ITEMS + 2  # padding and mask rows


@pytest.mark.parametrize("num_peers", [1, 3])
def test_loss_reaches_every_peer_and_the_table(num_peers):
    peers = _peers("gru4rec", num_peers=num_peers).train()
    hidden = peers(_items())[:, :, -1]  # [K, B, d]
    weight, bias = peers.output_layer()
    loss = hail_ext.med_loss(hidden, weight, torch.tensor([0, 5, NUM_ITEMS - 1]), bias=bias)
    loss.backward()
    for encoder in peers.encoders:
        assert encoder.gru.weight_ih_l0.grad.abs().sum() > 0
    assert peers.tables[0].weight.grad[1:].abs().sum() > 0
    assert peers.tables[0].weight.grad[0].abs().sum() == 0  # padding never learns


def test_logits_match_the_output_layer():
    peers = _peers("sasrec")
    hidden = torch.randn(2, 4, DIM)
    weight, bias = peers.output_layer()
    expected = hidden @ weight.T + bias
    torch.testing.assert_close(peers.logits(hidden), expected)


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="model must be one of"):
        Peers("transformer", NUM_ITEMS)
    with pytest.raises(ValueError, match="num_peers"):
        Peers("sasrec", NUM_ITEMS, num_peers=0)
    with pytest.raises(ValueError, match=r"L <= 7"):
        _peers("sasrec")(torch.ones(1, 9, dtype=torch.long))
