"""K peer encoders of the same architecture, and the item table they are scored against.

The peers start from different seeds so that they learn different views of the data. By default
they share one item table (input embedding and tied output layer, as in the HAIL paper); with
`shared_items=False` each peer has its own. K = 1 is the single-network baseline.
"""

from __future__ import annotations

import torch
from torch import nn

from hail_ext.models.bert4rec import BERT4Rec
from hail_ext.models.gru4rec import GRU4Rec
from hail_ext.models.sasrec import SASRec

ENCODERS = {"sasrec": SASRec, "bert4rec": BERT4Rec, "gru4rec": GRU4Rec}


class Peers(nn.Module):
    """K encoders mapping item ids `[B, L]` to hidden states `[K, B, L, d]`.

    Item ids are 1..num_items with 0 for padding; a cloze model (BERT4Rec) also has a mask token,
    num_items + 1. The output layer scores only the real items: class c is item c + 1.
    """

    def __init__(
        self,
        model: str,
        num_items: int,
        num_peers: int = 2,
        dim: int = 64,
        max_len: int = 50,
        layers: int = 2,
        heads: int = 2,
        dropout: float = 0.2,
        shared_items: bool = True,
        bias: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if model not in ENCODERS:
            raise ValueError(f"model must be one of {sorted(ENCODERS)}, got {model!r}")
        if num_peers < 1:
            raise ValueError(f"num_peers must be >= 1, got {num_peers}")
        if num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {num_items}")
        encoder_class = ENCODERS[model]
        self.num_items = num_items
        self.max_len = max_len
        self.cloze = not encoder_class.causal
        self.mask_token = num_items + 1 if self.cloze else None
        rows = num_items + 2 if self.cloze else num_items + 1

        num_tables = 1 if shared_items else num_peers
        self.tables = nn.ModuleList(
            _seeded(seed, 1000 + t, lambda: _item_table(rows, dim)) for t in range(num_tables)
        )
        self.biases = nn.ParameterList(
            nn.Parameter(torch.zeros(num_items)) for _ in range(num_tables if bias else 0)
        )
        self.encoders = nn.ModuleList(
            _seeded(
                seed,
                k,
                lambda k=k: encoder_class(
                    self.tables[k % num_tables], max_len, layers, heads, dropout
                ),
            )
            for k in range(num_peers)
        )

    @property
    def num_peers(self) -> int:
        return len(self.encoders)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        if items.dim() != 2 or items.shape[1] > self.max_len:
            raise ValueError(
                f"items must be [B, L] with L <= {self.max_len}, got {tuple(items.shape)}"
            )
        return torch.stack([encoder(items) for encoder in self.encoders])  # [K, B, L, d]

    def output_layer(self) -> tuple:
        """(item_weight `[V, d]` or `[K, V, d]`, bias `[V]`, `[K, V]` or None) over real items."""
        weights = [table.weight[1 : self.num_items + 1] for table in self.tables]
        biases = list(self.biases)
        if len(weights) == 1:
            return weights[0], (biases[0] if biases else None)
        # A table per peer: stack them for the loss, repeating none.
        return torch.stack(weights), (torch.stack(biases) if biases else None)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden `[K, N, d]` -> logits `[K, N, V]` over the real items (class c = item c + 1)."""
        weight, bias = self.output_layer()
        weight = weight if weight.dim() == 3 else weight.expand(self.num_peers, -1, -1)
        logits = torch.bmm(hidden, weight.transpose(1, 2))
        return logits if bias is None else logits + bias.view(-1, 1, self.num_items)


def _item_table(rows: int, dim: int) -> nn.Embedding:
    table = nn.Embedding(rows, dim, padding_idx=0)
    nn.init.normal_(table.weight, std=0.02)
    with torch.no_grad():
        table.weight[0].zero_()
    return table


def _seeded(seed: int, stream: int, make):
    """Build a module from its own random stream, leaving the global generator as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 10007 + stream)
        return make()
