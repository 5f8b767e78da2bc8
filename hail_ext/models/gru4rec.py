"""GRU4Rec (Hidasi et al., "Session-based Recommendations with Recurrent Neural Networks",
ICLR 2016), as it is used as a baseline for next-item prediction.

A GRU reads the item embeddings; its state at each position predicts the next item. Departures:
the full softmax of :func:`hail_ext.med_loss` in place of session-parallel mini-batches with
sampled ranking losses, and the hidden size tied to the item embedding size.
"""

from __future__ import annotations

import torch
from torch import nn


class GRU4Rec(nn.Module):
    """Maps item ids `[B, L]` (0 = padding, left-padded) to hidden states `[B, L, d]`."""

    causal = True

    def __init__(
        self,
        item_embedding: nn.Embedding,
        max_len: int,
        layers: int = 1,
        heads: int = 0,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        del max_len, heads  # a recurrent network needs neither
        dim = item_embedding.embedding_dim
        self.item_embedding = item_embedding
        self.drop = nn.Dropout(dropout)
        self.gru = nn.GRU(
            dim, dim, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0
        )
        self.out = nn.Linear(dim, dim)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        # Left padding keeps the latest item last; zero inputs over the padding leave the state
        # close to its start before the first real item arrives.
        x = self.drop(self.item_embedding(items))  # [B, L, d]
        states, _ = self.gru(x)  # [B, L, d]
        return self.out(self.drop(states))
