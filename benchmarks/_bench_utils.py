"""What the loss benchmark measures: inputs, providers, the float64 check and memory probes.

Kept apart from `loss_bench.py`, which only decides what to run, where and when.
"""

from __future__ import annotations

import csv
import ctypes
import datetime
import logging
import math
import os
import platform
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import hail_ext
from hail_ext import reference

logger = logging.getLogger("loss_bench")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
MODES = ("forward", "forward+backward")
PROVIDERS = ("fused", "reference", "compiled", "torch_chunked", "torch_ce", "cce", "liger", "floor")
K1_ONLY = ("torch_chunked", "torch_ce", "cce", "liger")
# Fused cross-entropies written in Triton: they run only on CUDA, from their own wheels
# (`pip install cut-cross-entropy liger-kernel`).
CUDA_ONLY = ("cce", "liger")

# Norm-wise relative error allowed against float64 (docs/SPEC.md, "Checked properties").
TOLERANCE = {"float32": 1e-5, "bfloat16": 1e-2}
# Rows of the float64 check: at most this many K*rows*V logits, so that it stays small.
CHECK_LOGITS = 4_000_000
CHECK_MAX_ROWS = 256
# Items per plain product of the floor: whole `[N, V]` logits would not fit at V = 1e6.
FLOOR_CHUNK_LOGITS = 1 << 24

# Rough working memory per K*N*V logit, in bytes, from the measurements quoted in issue 3
# (K = 2: reference 26, compiled 14; K = 1: F.cross_entropy 12, chunked about 1) with some
# headroom. With K = 1 the reference has no MED terms: it is a plain cross-entropy.
BYTES_PER_LOGIT = {"reference": 32, "compiled": 20, "torch_ce": 16, "torch_chunked": 2}
BYTES_PER_LOGIT_K1 = {**BYTES_PER_LOGIT, "reference": 16, "compiled": 16}

COLUMNS = (
    "provider",
    "mode",
    "K",
    "N",
    "d",
    "V",
    "dtype",
    "metric",
    "unit",
    "value",
    "status",
    "device",
    "machine",
    "version",
    "torch_version",
    "date",
    "run_id",
)
TIME_METRICS = (
    ("first_call", "ms"),
    ("peak_mem", "MiB"),
    ("time_p20", "ms"),
    ("time_p50", "ms"),
    ("time_p80", "ms"),
    ("reps", "count"),
)


@dataclass(frozen=True)
class Point:
    K: int
    N: int
    d: int
    V: int
    dtype: str

    def key(self) -> dict:
        return {"K": self.K, "N": self.N, "d": self.d, "V": self.V, "dtype": self.dtype}


def applies(provider: str, point: Point, device: str = "cpu") -> bool:
    """The other cross-entropies have no peers: they run only for K == 1; the Triton ones only
    on CUDA."""
    if provider in CUDA_ONLY and not device.startswith("cuda"):
        return False
    return point.K == 1 or provider not in K1_ONLY


def metrics(provider: str, mode: str) -> list[tuple[str, str]]:
    """(metric, unit) of every figure a provider has in a mode; the floor is not checked."""
    check = [] if provider == "floor" else [("rel_err_loss", "rel")]
    if provider != "floor" and mode != "forward":
        check.append(("rel_err_grad", "rel"))
    return check + list(TIME_METRICS)


def make_inputs(point: Point, device: str, seed: int = 0):
    """Hidden `[K, N, d]`, item table `[V, d]`, target `[N]`, with logits of std about 2."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(point.K, point.N, point.d, generator=gen) * (2.0 / math.sqrt(point.d))
    item_weight = torch.randn(point.V, point.d, generator=gen)
    target = torch.randint(0, point.V, (point.N,), generator=gen)
    dtype = DTYPES[point.dtype]
    return hidden.to(device, dtype), item_weight.to(device, dtype), target.to(device)


def make_provider(name: str, compile_dynamic: bool = True):
    """A callable `(hidden [K,N,d], item_weight [V,d], target [N]) -> scalar loss`."""
    if name == "fused":
        return hail_ext.med_loss
    if name == "reference":
        return reference.med_loss
    if name == "compiled":
        return torch.compile(reference.med_loss, dynamic=compile_dynamic)
    if name == "torch_chunked":
        options = torch.nn.LinearCrossEntropyOptions()
        return lambda h, w, t: F.linear_cross_entropy(h[0], w, t, options=options)
    if name == "torch_ce":
        return lambda h, w, t: F.cross_entropy(h[0] @ w.T, t)
    if name == "cce":
        from cut_cross_entropy import linear_cross_entropy  # Apple's Cut Cross-Entropy

        return lambda h, w, t: linear_cross_entropy(h[0], w, t)
    if name == "liger":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        liger = LigerFusedLinearCrossEntropyLoss()
        return lambda h, w, t: liger(w, h[0], t)
    raise ValueError(f"unknown provider {name!r}; expected one of {PROVIDERS}")


def floor_step(hidden, item_weight, backward: bool) -> None:
    """The 3*K plain products of the loss (K for the forward) and nothing else.

    The logits stand in for their own gradient; items go in chunks so the product stays
    in memory at V = 1e6 (the same flops, in products no thinner than 4096 items at N = 4096).
    """
    num_items = item_weight.shape[0]
    chunk = max(1, min(num_items, FLOOR_CHUNK_LOGITS // hidden.shape[1]))
    grad_weight = torch.zeros_like(item_weight) if backward else None
    for peer_hidden in hidden:  # [N, d]
        grad_hidden = torch.zeros_like(peer_hidden) if backward else None
        for start in range(0, num_items, chunk):
            weight = item_weight[start : start + chunk]  # [C, d]
            logits = peer_hidden @ weight.T  # [N, C]
            if backward:
                grad_hidden += logits @ weight
                grad_weight[start : start + chunk] += logits.T @ peer_hidden


def run_step(provider, hidden, item_weight, target, backward: bool) -> None:
    """One forward (under no_grad) or one forward + backward of a provider."""
    if not backward:
        with torch.no_grad():
            provider(hidden, item_weight, target)
        return
    hidden.grad = item_weight.grad = None
    provider(hidden, item_weight, target).backward()


def check_rows(point: Point) -> int:
    """Rows of the float64 check: all of a small point, a slice of a big one."""
    return max(2, min(point.N, CHECK_MAX_ROWS, CHECK_LOGITS // (point.K * point.V)))


def check_provider(provider, hidden, item_weight, target, rows: int) -> dict:
    """Loss and gradients on the first rows against a float64 evaluation of the reference.

    Returns the norm-wise relative errors `{"loss": ..., "grad": ...}` (grad: the worse of
    hidden and item_weight). Warnings raised meanwhile (a fall-back, say) are logged.
    """
    hidden = hidden[:, :rows].detach().clone().requires_grad_()
    item_weight = item_weight.detach().clone().requires_grad_()
    target = target[:rows]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss = provider(hidden, item_weight, target)
        loss.backward()
    for warning in caught:  # a silent fall-back to another path would show here
        logger.warning("during the check: %s", warning.message)

    hidden64 = hidden.detach().double().requires_grad_()
    weight64 = item_weight.detach().double().requires_grad_()
    loss64 = reference.med_loss(hidden64, weight64, target)
    loss64.backward()
    grad_errors = (_rel_err(hidden.grad, hidden64.grad), _rel_err(item_weight.grad, weight64.grad))
    return {"loss": _rel_err(loss.detach(), loss64), "grad": max(grad_errors)}


def _rel_err(value: torch.Tensor, truth: torch.Tensor) -> float:
    truth = truth.detach()
    scale = truth.norm().clamp_min(torch.finfo(torch.float64).tiny)
    return float((value.double() - truth).norm() / scale)


def estimate_bytes(provider: str, point: Point) -> int:
    """Rough peak working memory of one forward + backward, inputs and gradients included."""
    size = DTYPES[point.dtype].itemsize
    inputs = 2 * size * (point.K * point.N * point.d + point.V * point.d)
    logits = point.K * point.N * point.V
    per_logit = BYTES_PER_LOGIT_K1 if point.K == 1 else BYTES_PER_LOGIT
    if provider in per_logit:
        return inputs + per_logit[provider] * logits
    if provider == "floor":
        return inputs + size * min(logits, FLOOR_CHUNK_LOGITS)
    return inputs + (64 << 20)  # fused: tiles of a few MB, O(K * N) statistics


def available_bytes(device: str = "cpu") -> int:
    """Free memory of the device: the GPU's for CUDA, else the machine's MemAvailable."""
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info(torch.device(device))[0]
    kib = _proc_field("/proc/meminfo", "MemAvailable")
    if kib is None:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    return kib * 1024


def reset_peak_memory(device: str) -> int:
    """Start a new peak and return the baseline in bytes (held memory: the inputs and so on).

    On the CPU: hand freed heap pages back (malloc_trim) so they must fault in again and
    count, then reset the resident high-water mark (Linux `clear_refs` 5).
    """
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    return _proc_status_bytes("VmRSS")


def peak_memory(device: str) -> int:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    return _proc_status_bytes("VmHWM")


def _proc_status_bytes(field: str) -> int:
    kib = _proc_field("/proc/self/status", field)
    if kib is None:
        raise RuntimeError(f"{field} missing from /proc/self/status")
    return kib * 1024


def _proc_field(path: str, field: str) -> int | None:
    """A `Field:   123 kB` line of a /proc file, in kB."""
    with open(path) as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def machine(device: str, threads: int) -> str:
    """The processor (and GPU) by name, with the cores this process may use."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            names = [
                line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")
            ]
        cpu = next((name for name in names if name), cpu)
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0))
    name = f"{cpu} ({cores} cores, {threads} threads)"
    if device.startswith("cuda"):
        name += f"; {torch.cuda.get_device_name()}"
    return name


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_context(device: str, threads: int | None = None) -> dict:
    """The columns shared by every row of a run: where, what and when."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return {
        "device": device,
        "machine": machine(device, threads or torch.get_num_threads()),
        "version": version(),
        "torch_version": torch.__version__,
        "date": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "run_id": now.strftime("%Y%m%d-%H%M%S"),
    }


def version() -> str:
    """hail_ext's version, the commit and the instruction set of its CPU sweeps."""
    info = hail_ext.build_info()
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = "-dirty" if commit and _git("status", "--porcelain", "--", "csrc", "hail_ext") else ""
    label = info["version"] + (f"+g{commit}{dirty}" if commit else "")
    return f"{label} ({info.get('cpu_isa') or 'no kernels'})"


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=10, cwd=Path(__file__).parent
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def append_csv(path: Path, rows: list[dict]) -> None:
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if row[key] is None else row[key] for key in COLUMNS})
