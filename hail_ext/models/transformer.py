"""The self-attention block shared by SASRec and BERT4Rec, and their attention masks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    """Pre-norm transformer block: self-attention then a position-wise feed-forward layer, each
    added back through a residual connection."""

    def __init__(self, dim: int, heads: int, dropout: float, ffn_dim: int) -> None:
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"dim ({dim}) must be a multiple of heads ({heads})")
        self.heads = heads
        self.dropout = dropout
        self.attn_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_out = nn.Linear(dim, dim)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """x `[B, L, d]`; allowed `[B, 1, L, L]` bool, True where a query may attend a key."""
        batch, length, dim = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).split(dim, dim=-1)
        q, k, v = (t.view(batch, length, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        p = self.dropout if self.training else 0.0
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p)
        attended = attended.transpose(1, 2).reshape(batch, length, dim)  # [B, L, d]
        x = x + self.drop(self.attn_out(attended))
        return x + self.drop(self.ffn(self.ffn_norm(x)))


def attention_mask(items: torch.Tensor, causal: bool) -> torch.Tensor:
    """`[B, 1, L, L]` bool: queries see real keys (and, if causal, only earlier ones).

    Every position may always see itself, so that a padding query still has one key and the
    softmax of attention never divides by zero; padding outputs are never used.
    """
    length = items.shape[1]
    allowed = (items != 0)[:, None, None, :]  # [B, 1, 1, L]
    if causal:
        allowed = allowed & torch.ones(length, length, dtype=torch.bool, device=items.device).tril()
    eye = torch.eye(length, dtype=torch.bool, device=items.device)
    return allowed | eye
