"""Ranking metrics, both protocols, history filtering, ties and the ensemble."""

import math

import numpy as np
import pytest
import torch

from hail_ext.data import build, leave_one_out
from hail_ext.eval import build_eval_set, evaluate, sample_unseen
from hail_ext.eval.metrics import as_dict, metric_sums, target_rank
from hail_ext.eval.protocol import EvalSet


def test_a_tie_counts_against_the_target():
    scores = torch.tensor([[1.0, 2.0, 2.0, 0.5], [3.0, 1.0, 1.0, 1.0]])
    target_score = scores[:, 1]
    assert target_rank(scores, target_score).tolist() == [1, 3]


def test_metrics_from_ranks():
    sums = metric_sums(torch.tensor([0, 3, 12]))
    values = as_dict(sums, 3)
    assert values["hr@1"] == pytest.approx(1 / 3)
    assert values["hr@5"] == pytest.approx(2 / 3) and values["hr@20"] == pytest.approx(1.0)
    assert values["ndcg@10"] == pytest.approx((1 + 1 / math.log2(5)) / 3)
    assert values["mrr@20"] == pytest.approx((1 + 1 / 4 + 1 / 13) / 3)
    assert values["mrr@10"] == pytest.approx((1 + 1 / 4) / 3)


class FixedScores(torch.nn.Module):
    """A stand-in for Peers: peer k scores user row b with `table[k, b]`, row b being the
    first input item."""

    mask_token = None

    def __init__(self, table):
        super().__init__()
        self.table = table  # [K, U, V]
        self.num_peers = table.shape[0]

    def forward(self, items):
        rows = items[:, 0]
        return torch.stack([rows, rows]).float().T.expand(self.num_peers, -1, 2)[..., None]

    def logits(self, hidden):
        rows = hidden[0, :, 0].long()
        return self.table[:, rows]


def _eval_set(targets, histories, negatives):
    ptr = np.cumsum([0] + [len(h) for h in histories])
    items = np.concatenate([np.array(h, dtype=np.int64) for h in histories])
    inputs = np.arange(len(targets))[:, None].repeat(2, 1)
    return EvalSet(inputs, np.array(targets), ptr, items, np.array(negatives))


def test_history_filter_and_sampled_negatives():
    # One peer, one user, items 1..6 with scores 6..1: item 1 ranks first.
    table = torch.tensor([[[6.0, 5.0, 4.0, 3.0, 2.0, 1.0]]])
    eval_set = _eval_set([4], [[1, 2, 4]], [[5, 6, 0]])  # target 4 is in the history too
    model = FixedScores(table)
    kept = evaluate(model, eval_set, keep_history=True)
    filtered = evaluate(model, eval_set)
    assert kept["full"]["peer0"]["hr@1"] == 0 and kept["full"]["peer0"]["mrr@5"] == 1 / 4
    assert filtered["full"]["peer0"]["mrr@5"] == 1 / 2  # only item 3 is above, items 1, 2 gone
    assert filtered["sampled"]["peer0"]["hr@1"] == 1.0  # beats items 5 and 6; 0 is no item


def test_ensemble_is_the_mean_of_log_probabilities():
    # Peer 0 is sure of item 1; peer 1 splits between items 2 and 3. The mean of the
    # probabilities would rank item 1 first, the mean of log-probabilities ranks item 2 first.
    table = torch.tensor([[[10.0, 5.0, -30.0]], [[-10.0, 0.0, 0.0]]])
    assert torch.softmax(table[:, 0], -1).mean(0).argmax() == 0
    for target, want in ((2, 1.0), (1, 0.0)):
        eval_set = _eval_set([target], [[]], [[3]])
        results = evaluate(FixedScores(table), eval_set, keep_history=True)
        assert results["full"]["ensemble"]["hr@1"] == want
    assert results["full"]["peer0"]["hr@1"] == 1.0
    assert set(results["full"]) == {"peer0", "peer1", "ensemble"}


def test_sampled_negatives_are_unseen_distinct_and_fixed():
    rng = lambda s: np.random.default_rng(s)  # noqa: E731
    seen = np.array([2, 3, 5, 8])
    for num_items in (12, 5000):  # the pool branch and the rejection branch
        drawn = sample_unseen(seen, num_items, 6, rng(7))
        assert len(drawn) == 6 == len(set(drawn.tolist()))
        assert not set(drawn.tolist()) & set(seen.tolist())
        assert drawn.min() >= 1 and drawn.max() <= num_items
        assert np.array_equal(drawn, sample_unseen(seen, num_items, 6, rng(7)))
    assert sorted(sample_unseen(seen, 9, 99, rng(0)).tolist()) == [1, 4, 6, 7, 9]


def test_eval_set_negatives_depend_on_seed_not_batching():
    pairs = [(str(u), str(i)) for u in range(6) for i in range(1 + u, 9 + u)]
    split = leave_one_out(build(pairs))
    one = build_eval_set(split, "test", 5, seed=3, num_negatives=4)
    two = build_eval_set(split, "test", 5, seed=3, num_negatives=4)
    other = build_eval_set(split, "test", 5, seed=4, num_negatives=4)
    assert np.array_equal(one.negatives, two.negatives)
    assert not np.array_equal(one.negatives, other.negatives)
    for row, user in enumerate(split.users):
        assert not set(one.negatives[row].tolist()) & set(split.data.sequences[user].tolist())
