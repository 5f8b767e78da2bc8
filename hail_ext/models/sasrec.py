"""SASRec (Kang and McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018).

Causal self-attention over the item sequence; the hidden state at each position predicts the
next item. Departures from the paper: pre-norm blocks with GELU (the original uses ReLU) and the
full softmax of :func:`hail_ext.med_loss` in place of one sampled negative per position.
"""

from __future__ import annotations

import torch
from torch import nn

from hail_ext.models.transformer import Block, attention_mask


class SASRec(nn.Module):
    """Maps item ids `[B, L]` (0 = padding, left-padded) to hidden states `[B, L, d]`.

    item_embedding: the input item table, shared with the output layer (tied) by the owner.
    """

    causal = True

    def __init__(
        self,
        item_embedding: nn.Embedding,
        max_len: int,
        layers: int = 2,
        heads: int = 2,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        dim = item_embedding.embedding_dim
        self.item_embedding = item_embedding
        self.position = nn.Embedding(max_len, dim)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, heads, dropout, dim) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        nn.init.normal_(self.position.weight, std=0.02)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        length = items.shape[1]
        dim = self.item_embedding.embedding_dim
        x = self.item_embedding(items) * dim**0.5  # [B, L, d]
        x = x + self.position.weight[-length:]
        x = self.drop(x) * (items != 0).unsqueeze(-1)
        allowed = attention_mask(items, causal=True)
        for block in self.blocks:
            x = block(x, allowed)
        return self.norm(x)
