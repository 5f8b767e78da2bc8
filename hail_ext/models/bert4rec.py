"""BERT4Rec (Sun et al., "BERT4Rec: Sequential Recommendation with Bidirectional Encoder
Representations from Transformer", CIKM 2019), the base network of the HAIL paper.

Bidirectional self-attention trained on the cloze task: masked items are predicted from both
sides; at inference a mask token is appended after the history. The paper's base, which HAIL
also uses, is hidden size 64, 2 layers, 2 heads, dropout 0.2. Departures: pre-norm blocks, and
the full softmax of :func:`hail_ext.med_loss` computed only at the masked positions.
"""

from __future__ import annotations

import torch
from torch import nn

from hail_ext.models.transformer import Block, attention_mask


class BERT4Rec(nn.Module):
    """Maps item ids `[B, L]` (0 = padding, `mask_token` = to predict) to hidden states
    `[B, L, d]`, which BERT4Rec's output transform (dense, GELU, layer norm) prepares for the
    tied item table."""

    causal = False

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
        self.input_norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, heads, dropout, 4 * dim) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim))
        nn.init.normal_(self.position.weight, std=0.02)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        length = items.shape[1]
        x = self.item_embedding(items) + self.position.weight[-length:]  # [B, L, d]
        x = self.drop(self.input_norm(x))
        allowed = attention_mask(items, causal=False)
        for block in self.blocks:
            x = block(x, allowed)
        return self.head(self.norm(x))
