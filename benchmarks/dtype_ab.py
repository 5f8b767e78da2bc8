"""Two variants of the loss timed call by call in one process (an A/B test).

`--pair dtype` (default): one provider in float32 (A) and bfloat16 (B); issue 3 asks that
bfloat16 be no slower. `--pair products`: the fused loss in bfloat16 with float32 tile products
(A, `HAIL_CPU_BF16_PRODUCTS=0`) and with bfloat16 micro-kernel products (B; CPUs with AMX).
`--pair torch_ce`: `F.cross_entropy` (A) and the fused loss (B), both bfloat16, K = 1.

Timed one variant per process, minutes apart (`loss_bench.py`), the two see different states of a
shared machine whose speed drifts by tens of percent; here the calls alternate in the order
A B B A, so a drift slower than one round cancels out of each round's ratio. Prints, per point,
each variant's p20/p50/p80 and the p20/p50/p80 of the per-round ratio B / A; appends one row
per call to a CSV (column `dtype` holds the variant's label).

    .venv/bin/python benchmarks/dtype_ab.py --rounds 8
    .venv/bin/python benchmarks/dtype_ab.py --pair products --rounds 6
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import _bench_utils as bu
import torch

RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = ("run_id", "provider", "mode", "K", "N", "d", "V", "round", "dtype", "seconds")
COLUMNS += ("threads", "machine", "version", "date")
# Issue 3's two goal points, forward + backward.
POINTS = ((2, 4096, 64, 20_000), (1, 4096, 64, 100_000))


@dataclass(frozen=True)
class Variant:
    label: str
    provider: str
    dtype: str
    env: dict = field(default_factory=dict)  # environment variables set before each call


def variants(pair: str, provider: str) -> tuple[Variant, Variant]:
    """(A, B) of a pair; the ratio reported is B / A."""
    if pair == "products":
        return (
            Variant("bf16-f32-products", "fused", "bfloat16", {"HAIL_CPU_BF16_PRODUCTS": "0"}),
            Variant("bf16-products", "fused", "bfloat16", {"HAIL_CPU_BF16_PRODUCTS": "1"}),
        )
    if pair == "torch_ce":
        return Variant("torch_ce", "torch_ce", "bfloat16"), Variant("fused", "fused", "bfloat16")
    return Variant("float32", provider, "float32"), Variant("bfloat16", provider, "bfloat16")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", default="dtype", choices=("dtype", "products", "torch_ce"))
    parser.add_argument(
        "--provider",
        default="fused",
        choices=("fused", "torch_ce", "floor"),
        help="with --pair dtype",
    )
    parser.add_argument("--rounds", type=int, default=8, help="A B B A rounds after a warm-up")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--point", nargs=4, type=int, action="append", metavar=("K", "N", "d", "V"))
    parser.add_argument("--csv", type=Path, default=RESULTS / "dtype_ab.csv")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    torch_ce = args.pair == "torch_ce" or (args.pair == "dtype" and args.provider == "torch_ce")
    if torch_ce and any(p[0] != 1 for p in args.point or POINTS):
        parser.error("torch_ce has no peers: give only points with K = 1 (--point 1 N d V)")
    return args


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    context = bu.run_context("cpu", args.threads)
    rows = []
    pair = variants(args.pair, args.provider)
    for K, N, d, V in args.point or POINTS:
        calls = {v.label: _call(v, bu.Point(K, N, d, V, v.dtype)) for v in pair}
        for step in calls.values():  # warm-up: first-call allocations, thread pool start
            step()
        times = {v.label: [] for v in pair}
        for round_ in range(args.rounds):
            order = [v.label for v in (pair if round_ % 2 == 0 else pair[::-1])]
            for label in order + order[::-1]:
                times[label].append(_timed(calls[label]))
        point = {
            "provider": "/".join(sorted({v.provider for v in pair})),
            "mode": "forward+backward",
        }
        point.update({"K": K, "N": N, "d": d, "V": V, "threads": torch.get_num_threads()})
        for label, seconds in times.items():
            for index, value in enumerate(seconds):
                rows.append({**context, **point, "round": index // 2, "dtype": label,
                             "seconds": f"{value:.6f}"})  # fmt: skip
        _report(point, times, pair)
    _append(args.csv, rows)
    return 0


def _call(variant: Variant, point: bu.Point):
    """One forward + backward of the variant at the point, its environment set for the call."""
    hidden, item_weight, target = bu.make_inputs(point, "cpu")
    if variant.provider != "floor":
        hidden.requires_grad_(True)
        item_weight.requires_grad_(True)
        loss_fn = bu.make_provider(variant.provider)

    def call():
        os.environ.update(variant.env)
        try:
            if variant.provider == "floor":
                bu.floor_step(hidden, item_weight, backward=True)
            else:
                bu.run_step(loss_fn, hidden, item_weight, target, backward=True)
        finally:
            for name in variant.env:
                os.environ.pop(name, None)

    return call


def _timed(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def _report(point: dict, times: dict[str, list[float]], pair: tuple[Variant, Variant]) -> None:
    """Each variant's spread, and the spread of B / A over the rounds' pairs."""
    a, b = (times[v.label] for v in pair)
    pairs = [tb / ta for ta, tb in zip(a, b, strict=True)]
    figures = {**{name: sorted(values) for name, values in times.items()}, "ratio": sorted(pairs)}
    where = ", ".join(f"{key}={value}" for key, value in point.items() if key != "threads")
    print(where)
    for name, values in figures.items():
        unit = "" if name == "ratio" else " s"
        quantiles = statistics.quantiles(values, n=5) if len(values) > 1 else values * 4
        p20, p80 = quantiles[0], quantiles[-1]
        median = statistics.median(values)
        print(f"  {name:>17}: p20 {p20:.3f}{unit}  p50 {median:.3f}{unit}  p80 {p80:.3f}{unit}")


def _append(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    sys.exit(main())
