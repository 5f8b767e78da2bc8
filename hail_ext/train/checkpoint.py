"""Checkpoints: written atomically, read back with `weights_only=True`."""

from __future__ import annotations

import os
from pathlib import Path

import torch

FORMAT = 1


def save(state: dict, path: str | Path) -> None:
    """Write `state` to a temporary file beside `path`, then rename it over `path`, so that a
    run killed while writing leaves the previous checkpoint whole."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            torch.save({"format": FORMAT, **state}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load(path: str | Path) -> dict:
    """A checkpoint written by :func:`save`, loaded onto the CPU without unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path}: not a hail_ext checkpoint of format {FORMAT} (found {found})")
    return state
