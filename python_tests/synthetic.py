"""Tiny interaction logs for the training tests: each user walks a cycle of items, so the next
item is fully predictable from the last one and a trained model must rank it first."""

import numpy as np

from hail_ext.data import build
from hail_ext.train.config import TrainConfig


def cycle_pairs(num_users=30, num_items=12, seed=0) -> list:
    rng = np.random.default_rng(seed)
    pairs = []
    for user in range(num_users):
        start, length = rng.integers(0, num_items), rng.integers(8, 14)
        pairs += [(str(user), str((start + step) % num_items + 1)) for step in range(length)]
    return pairs


def cycle_data(**kw):
    return build(cycle_pairs(**kw), name="cycle")


def write_cycle_file(path, **kw) -> str:
    path.write_text("".join(f"{u} {i}\n" for u, i in cycle_pairs(**kw)))
    return str(path)


def tiny_config(**overrides) -> TrainConfig:
    settings = {
        "model": "sasrec",
        "peers": 2,
        "dim": 16,
        "layers": 1,
        "heads": 2,
        "max_len": 8,
        "epochs": 2,
        "batch_size": 16,
        "lr": 5e-3,
        "progress": False,
        "eval_batch_size": 64,
        "dropout": 0.1,
        "data": "cycle",
        **overrides,
    }
    return TrainConfig(**settings)
