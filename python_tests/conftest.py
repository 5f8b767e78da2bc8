"""Fixtures shared by the loss tests: the device and the tiling plan under test."""

import pytest
import torch

import hail_ext

CUDA_READY = torch.cuda.is_available() and hail_ext.build_info().get("cuda", False)
NO_CUDA = "no CUDA device" if not torch.cuda.is_available() else "built without CUDA kernels"

# A test that takes `device` runs on the CPU kernels and, where a GPU and the CUDA kernels are
# there, on the CUDA kernels (marked `cuda`: `pytest -m cuda` runs every GPU test).
DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not CUDA_READY, reason=NO_CUDA)]
    ),
]

# (rows per block, items per tile): one tile per block; several blocks and tiles with ragged
# ends; one row and a few items at a time.
TILINGS = [None, "16,64", "1,7"]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(params=TILINGS, ids=["auto", "tiled", "thin"])
def tiling(request, monkeypatch):
    if request.param is not None:
        monkeypatch.setenv("HAIL_TILE_SHAPE", request.param)
    return request.param
