"""Data-parallel training under `torchrun`: gloo on the CPU, NCCL on CUDA."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def setup(device: str) -> tuple:
    """(rank, world size, device) of this process; starts the process group when `torchrun`
    launched several processes and none is running yet."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = available(device)
    if world <= 1:
        return 0, 1, device
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def available(device: str | torch.device) -> torch.device:
    """`device` as a torch.device, or a ValueError saying why this machine cannot train on it
    (torch's own error for a missing GPU is an assertion deep in a later call)."""
    device = torch.device(device)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        built = "was built without CUDA" if torch.version.cuda is None else "sees no GPU"
        raise ValueError(f"device {str(device)!r}: this torch ({torch.__version__}) {built}")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ValueError(
            f"device {str(device)!r}: this machine has {count} GPU(s), 0 to {count - 1}"
        )
    return device


def teardown() -> None:
    """End the process group, if any: once per process, when it is done training."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()
