"""Interaction logs: readers, id remapping, k-core, leave-one-out split, training batches."""

from hail_ext.data.prepare import Interactions, Split, build, k_core_filter, leave_one_out
from hail_ext.data.readers import DataFormatError, guess_format, read_interactions

__all__ = [
    "DataFormatError",
    "Interactions",
    "Split",
    "build",
    "guess_format",
    "k_core_filter",
    "leave_one_out",
    "load",
    "read_interactions",
]


def load(source: str, fmt: str | None = None, k_core: int = 0, **csv_columns) -> Interactions:
    """An interaction log by built-in name (see :func:`hail_ext.datasets.names`) or by path."""
    from pathlib import Path

    from hail_ext import datasets

    if not Path(source).exists():
        if source in datasets.names():
            return build(datasets.pairs(source), k_core=k_core, name=source)
        built_in = ", ".join(datasets.names())
        raise FileNotFoundError(f"data {source!r}: no such file, nor a built-in ({built_in})")
    pairs = read_interactions(source, fmt, **csv_columns)
    return build(pairs, k_core=k_core, name=Path(source).name)
