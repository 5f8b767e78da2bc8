"""`nn.Module` wrappers that hold the loss options."""

from __future__ import annotations

from dataclasses import asdict

import torch
from torch import nn

from hail_ext.loss import linear_cross_entropy, med_loss
from hail_ext.options import MEDOptions


class MEDLoss(nn.Module):
    """:func:`hail_ext.med_loss` with its options fixed at construction."""

    def __init__(
        self,
        alpha: float = 0.5,
        gamma: float = 1.0,
        beta: float = 0.0,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.options = MEDOptions(alpha, gamma, beta, ignore_index, reduction)

    def forward(self, hidden, item_weight, target, bias=None, row_weight=None) -> torch.Tensor:
        return med_loss(
            hidden, item_weight, target, bias=bias, row_weight=row_weight, **asdict(self.options)
        )

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in asdict(self.options).items())


class LinearCrossEntropy(nn.Module):
    """:func:`hail_ext.linear_cross_entropy` with its options fixed at construction."""

    def __init__(self, ignore_index: int = -100, reduction: str = "mean") -> None:
        super().__init__()
        self.options = MEDOptions(ignore_index=ignore_index, reduction=reduction)

    def forward(self, hidden, item_weight, target, bias=None, row_weight=None) -> torch.Tensor:
        return linear_cross_entropy(
            hidden,
            item_weight,
            target,
            bias=bias,
            row_weight=row_weight,
            ignore_index=self.options.ignore_index,
            reduction=self.options.reduction,
        )

    def extra_repr(self) -> str:
        return f"ignore_index={self.options.ignore_index}, reduction={self.options.reduction!r}"
