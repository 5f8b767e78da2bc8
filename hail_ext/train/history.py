"""The per-epoch record of a run: CSV and learning-curve plot."""

from __future__ import annotations

import csv
from pathlib import Path

from matplotlib.figure import Figure


def write_csv(rows: list, path: str | Path) -> None:
    """One row per epoch; columns in order of first appearance."""
    columns: dict = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


def plot(rows: list, path: str | Path) -> None:
    """Training loss and validation NDCG@10 (each peer and the ensemble) against the epoch."""
    figure = Figure(figsize=(9, 3.6), layout="constrained")
    loss_axes, ndcg_axes = figure.subplots(1, 2)
    epochs = [row["epoch"] for row in rows]
    loss_axes.plot(epochs, [row["train_loss"] for row in rows], marker="o")
    loss_axes.set(xlabel="epoch", ylabel="training loss", title="loss")
    for key in rows[0] if rows else ():
        if key.startswith("valid_ndcg@10_"):
            ndcg_axes.plot(
                epochs,
                [row[key] for row in rows],
                marker="o",
                label=key.removeprefix("valid_ndcg@10_"),
            )
    ndcg_axes.set(xlabel="epoch", ylabel="NDCG@10 (full ranking)", title="validation")
    ndcg_axes.legend()
    for axes in (loss_axes, ndcg_axes):
        axes.grid(alpha=0.3)
    figure.savefig(path, dpi=110)
