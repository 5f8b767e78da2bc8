"""From `(user, item)` pairs to per-user item sequences: k-core, id remapping, leave-one-out."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)


@dataclass
class Interactions:
    """Chronological item sequences, one per user, with items remapped to 1..V (0 = padding).

    sequences: one int64 array per user.
    item_ids: the file's id of item i at index i - 1.
    user_ids: the file's id of each user, in the order of `sequences`.
    """

    sequences: list
    item_ids: list
    user_ids: list
    name: str = ""

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def num_users(self) -> int:
        return len(self.sequences)

    @property
    def num_interactions(self) -> int:
        return int(sum(len(seq) for seq in self.sequences))


@dataclass
class Split:
    """Leave-one-out: per user, the last item is the test target and the one before it the
    validation target. Users with fewer than 3 interactions only train.

    train: the sequences to learn from (each user's items but the last two).
    users: index into `Interactions.sequences` of each evaluated user.
    """

    data: Interactions
    train: list
    users: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def history(self, split: str) -> list:
        """What the model sees of each evaluated user before the target of `split`."""
        cut = {"valid": 2, "test": 1}[_split_name(split)]
        return [self.data.sequences[u][:-cut] for u in self.users]

    def targets(self, split: str) -> np.ndarray:
        back = {"valid": -2, "test": -1}[_split_name(split)]
        return np.array([self.data.sequences[u][back] for u in self.users], dtype=np.int64)


def build(pairs: list, k_core: int = 0, name: str = "") -> Interactions:
    """Group `(user, item)` pairs into sequences (file order kept within a user), apply the
    k-core filter, and number the remaining items 1..V in order of first appearance."""
    if k_core < 0:
        raise ValueError(f"k_core must be >= 0, got {k_core}")
    if k_core > 1:
        pairs = k_core_filter(pairs, k_core)
        if not pairs:
            raise ValueError(f"the {k_core}-core of {name or 'the data'} is empty; lower k_core")

    item_index: dict[str, int] = {}
    grouped: dict[str, list] = {}
    for user, item in pairs:
        index = item_index.setdefault(item, len(item_index) + 1)
        grouped.setdefault(user, []).append(index)
    sequences = [np.asarray(items, dtype=np.int64) for items in grouped.values()]
    data = Interactions(sequences, list(item_index), list(grouped), name)
    logger.info(
        "%s: %d users, %d items, %d interactions",
        name or "data",
        data.num_users,
        data.num_items,
        data.num_interactions,
    )
    return data


def k_core_filter(pairs: list, k: int) -> list:
    """Drop users and items with fewer than `k` interactions, repeatedly, until none is left."""
    while True:
        users = Counter(user for user, _ in pairs)
        items = Counter(item for _, item in pairs)
        kept = [(u, i) for u, i in pairs if users[u] >= k and items[i] >= k]
        if len(kept) == len(pairs):
            return kept
        pairs = kept


def leave_one_out(data: Interactions) -> Split:
    """The split of the paper: the last item of each user for test, the one before for
    validation, the rest for training."""
    evaluated = [u for u, seq in enumerate(data.sequences) if len(seq) >= 3]
    train = [seq[:-2] if len(seq) >= 3 else seq for seq in data.sequences]
    if not evaluated:
        raise ValueError(
            f"{data.name or 'data'}: no user has the 3 interactions that "
            "leave-one-out needs (train, validation, test)"
        )
    if len(evaluated) < data.num_users:
        logger.info(
            "%d users with fewer than 3 interactions only train", data.num_users - len(evaluated)
        )
    return Split(data, train, np.asarray(evaluated, dtype=np.int64))


def _split_name(split: str) -> str:
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    return split
