"""Training examples and batches: fixed-length windows, next-item and cloze targets.

Sequences are left-padded with 0, so the most recent item always sits at the last position.
Positions without a target carry `IGNORE` (the loss's `ignore_index`), never item 0.
Every random choice of an epoch comes from a generator seeded by (seed, epoch), so an epoch is
the same whether the run went straight through or was resumed.
"""

from __future__ import annotations

import numpy as np

IGNORE = -100
OBJECTIVES = ("next", "cloze")


def windows(sequences: list, length: int, stride: int | None = None) -> np.ndarray:
    """Cut each sequence into windows of `length` items whose ends lie `stride` (default
    `length`) apart, from its end backwards, left-padding the oldest one: `[S, length]` int64.
    Sequences shorter than 2 items give no window."""
    stride = length if stride is None else stride
    rows = []
    for seq in sequences:
        if len(seq) < 2:
            continue
        for end in range(len(seq), 1, -stride):
            piece = seq[max(0, end - length) : end]
            if len(piece) < 2:
                break
            rows.append(np.pad(piece, (length - len(piece), 0)))
    if not rows:
        raise ValueError("no training sequence holds 2 or more items; nothing to learn from")
    return np.stack(rows).astype(np.int64)


def next_item_examples(sequences: list, max_len: int) -> tuple:
    """Inputs `[S, max_len]` and targets `[S, max_len]` for next-item prediction at every
    position (SASRec, GRU4Rec)."""
    # Windows overlap by one item, so that every item but a user's first is a target once.
    items = windows(sequences, max_len + 1, stride=max_len)
    inputs, targets = items[:, :-1], items[:, 1:].copy()
    targets[(targets == 0) | (inputs == 0)] = IGNORE
    return np.ascontiguousarray(inputs), targets


def cloze_examples(
    items: np.ndarray, mask_prob: float, mask_token: int, rng: np.random.Generator
) -> tuple:
    """BERT4Rec's cloze task: each item is replaced by `mask_token` with probability
    `mask_prob` and must be recovered; a window where nothing was drawn has its last item
    masked, so every window teaches something."""
    if not 0.0 < mask_prob < 1.0:
        raise ValueError(f"mask_prob must lie in (0, 1), got {mask_prob}")
    real = items != 0
    masked = real & (rng.random(items.shape) < mask_prob)
    none = ~masked.any(axis=1)
    masked[none, -1] = True
    inputs = np.where(masked, mask_token, items)
    targets = np.where(masked, items, IGNORE)
    return inputs, targets


def shard_order(num_examples: int, seed: int, epoch: int, rank: int, world: int) -> np.ndarray:
    """This process's share of a shuffled epoch; every process gets the same number of
    examples (the shuffled order is wrapped round to fill the last share)."""
    order = np.random.default_rng([seed, epoch, 0]).permutation(num_examples)
    per_rank = -(-num_examples // world)
    order = np.resize(order, per_rank * world)
    return order[rank::world]


def batches(order: np.ndarray, batch_size: int) -> list:
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def eval_inputs(histories: list, max_len: int, mask_token: int | None) -> np.ndarray:
    """The input to score the next item after each history: the last `max_len` items, or,
    for a cloze model, the last `max_len - 1` items followed by the mask token."""
    keep = max_len if mask_token is None else max_len - 1
    inputs = np.zeros((len(histories), max_len), dtype=np.int64)
    for row, history in enumerate(histories):
        tail = history[-keep:] if keep > 0 else history[:0]
        if mask_token is None:
            inputs[row, max_len - len(tail) :] = tail
        else:
            inputs[row, max_len - 1 - len(tail) : max_len - 1] = tail
            inputs[row, -1] = mask_token
    return inputs
