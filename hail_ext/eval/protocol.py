"""What an evaluation asks of a model: the inputs, targets, histories and sampled negatives of
the validation or test users of a leave-one-out split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hail_ext.data.batching import eval_inputs
from hail_ext.data.prepare import Split

NUM_NEGATIVES = 99


@dataclass
class EvalSet:
    """inputs `[U, L]`; targets `[U]` item ids; history as CSR (`history_ptr` `[U + 1]`,
    `history_items`) of the items each user saw before the target; negatives `[U, 99]` item ids
    the user never interacted with (0 where the catalogue has fewer left)."""

    inputs: np.ndarray
    targets: np.ndarray
    history_ptr: np.ndarray
    history_items: np.ndarray
    negatives: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)


def build_eval_set(
    split: Split,
    which: str,
    max_len: int,
    mask_token: int | None = None,
    seed: int = 0,
    num_negatives: int = NUM_NEGATIVES,
) -> EvalSet:
    """The evaluation of `which` ("valid" or "test"); the negatives depend only on `seed`, the
    user and `which`, never on batching or on the number of processes."""
    histories = split.history(which)
    targets = split.targets(which)
    seen = [np.unique(h) for h in histories]
    history_ptr = np.zeros(len(seen) + 1, dtype=np.int64)
    history_ptr[1:] = np.cumsum([len(s) for s in seen])
    history_items = np.concatenate(seen) if seen else np.zeros(0, dtype=np.int64)

    stream = {"valid": 1, "test": 2}[which]
    num_items = split.data.num_items
    negatives = np.zeros((len(targets), num_negatives), dtype=np.int64)
    for row, user in enumerate(split.users):
        rng = np.random.default_rng([seed, stream, int(user)])
        touched = np.unique(split.data.sequences[user])
        drawn = sample_unseen(touched, num_items, num_negatives, rng)
        negatives[row, : len(drawn)] = drawn
    inputs = eval_inputs(histories, max_len, mask_token)
    return EvalSet(inputs, targets, history_ptr, history_items.astype(np.int64), negatives)


def sample_unseen(seen: np.ndarray, num_items: int, count: int, rng: np.random.Generator):
    """Up to `count` distinct items of 1..num_items drawn uniformly from those not in the sorted
    array `seen`; all of them when fewer remain."""
    left = num_items - len(seen)
    if left <= 2 * count:
        pool = np.setdiff1d(np.arange(1, num_items + 1), seen, assume_unique=True)
        return pool if len(pool) <= count else rng.choice(pool, count, replace=False)
    # Most of the catalogue is unseen: rejection is cheaper than building the pool.
    picked: dict = {}
    while len(picked) < count:
        draw = rng.integers(1, num_items + 1, size=2 * count)
        for item in draw[~np.isin(draw, seen)]:
            picked.setdefault(int(item), None)
            if len(picked) == count:
                break
    return np.fromiter(picked, dtype=np.int64, count=count)
