"""Ranking evaluation of K peers and their ensemble (mean of the peers' log-probabilities).

Two protocols: "full" ranks the target against every item, with the user's history filtered out
unless `keep_history`; "sampled" ranks it against 99 items the user never interacted with (the
HAIL paper's protocol). A tie counts against the target in both.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from hail_ext.eval.metrics import as_dict, metric_sums, target_rank
from hail_ext.eval.protocol import EvalSet

PROTOCOLS = ("full", "sampled")


@torch.no_grad()
def evaluate(
    model,
    eval_set: EvalSet,
    *,
    batch_size: int = 256,
    device="cpu",
    keep_history: bool = False,
    bf16: bool = False,
    rank: int = 0,
    world: int = 1,
) -> dict:
    """{"full": {"peer0": {"hr@10": ...}, ..., "ensemble": {...}}, "sampled": {...}}.

    With `world` > 1 each process scores its share of the users and the sums are all-reduced,
    so every process returns the same numbers.
    """
    was_training = model.training
    model.eval()
    num_views = model.num_peers + 1
    sums = torch.zeros(num_views, len(PROTOCOLS), 3, 4, dtype=torch.float64)
    rows = np.arange(rank, len(eval_set), world)
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        with torch.autocast(torch.device(device).type, torch.bfloat16, enabled=bf16):
            views = _log_probs(model, eval_set, batch, device)  # [K + 1, B, V]
        full, sampled = _ranks(views, eval_set, batch, keep_history)
        sums[:, 0] += metric_sums(full).cpu()
        sums[:, 1] += metric_sums(sampled).cpu()
    count = torch.tensor([len(rows)], dtype=torch.float64)
    if world > 1:
        dist.all_reduce(sums)
        dist.all_reduce(count)
    model.train(was_training)

    names = [f"peer{k}" for k in range(model.num_peers)] + ["ensemble"]
    return {
        protocol: {name: as_dict(sums[v, p], int(count)) for v, name in enumerate(names)}
        for p, protocol in enumerate(PROTOCOLS)
    }


def _log_probs(model, eval_set: EvalSet, batch: np.ndarray, device) -> torch.Tensor:
    items = torch.from_numpy(eval_set.inputs[batch]).to(device)
    hidden = model(items)[:, :, -1]  # [K, B, d]
    log_probs = torch.log_softmax(model.logits(hidden).float(), dim=-1)  # [K, B, V]
    return torch.cat([log_probs, log_probs.mean(0, keepdim=True)])


def _ranks(views: torch.Tensor, eval_set: EvalSet, batch: np.ndarray, keep_history: bool):
    num_views, size, num_items = views.shape
    device = views.device
    target = torch.from_numpy(eval_set.targets[batch] - 1).to(device)  # class = item - 1
    target_score = views.gather(2, target.view(1, -1, 1).expand(num_views, -1, 1)).squeeze(2)

    full = views
    if not keep_history:
        seen = _history_mask(eval_set, batch, num_items).to(device)  # [B, V]
        seen[torch.arange(size, device=device), target] = False
        full = views.masked_fill(seen, -torch.inf)
    full_rank = target_rank(full, target_score)

    negatives = torch.from_numpy(eval_set.negatives[batch] - 1).to(device)  # [B, 99], -1 = none
    scores = views.gather(2, negatives.clamp_min(0).expand(num_views, -1, -1))
    scores = scores.masked_fill(negatives < 0, -torch.inf)
    sampled_rank = (scores >= target_score.unsqueeze(-1)).sum(-1)
    return full_rank, sampled_rank


def _history_mask(eval_set: EvalSet, batch: np.ndarray, num_items: int) -> torch.Tensor:
    starts, ends = eval_set.history_ptr[batch], eval_set.history_ptr[batch + 1]
    lengths = ends - starts
    row = np.repeat(np.arange(len(batch)), lengths)
    item = np.concatenate([eval_set.history_items[s:e] for s, e in zip(starts, ends, strict=True)])
    mask = torch.zeros(len(batch), num_items, dtype=torch.bool)
    mask[torch.from_numpy(row), torch.from_numpy(item - 1)] = True
    return mask
