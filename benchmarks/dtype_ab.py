"""bfloat16 against float32 for one provider, timed call by call in one process (an A/B test).

Issue 3 asks that bfloat16 be no slower than float32. Timed one dtype per process, minutes
apart (`loss_bench.py`), the two dtypes see different states of a shared machine whose speed
drifts by tens of percent; here the calls alternate in the order A B B A, so a drift slower than
one round cancels out of each round's ratio. Prints, per point, each dtype's p20/p50/p80 and the
p20/p50/p80 of the per-round ratio bfloat16 / float32; appends one row per call to a CSV.

    .venv/bin/python benchmarks/dtype_ab.py --rounds 8
"""

from __future__ import annotations

import argparse
import csv
import logging
import statistics
import sys
import time
from pathlib import Path

import _bench_utils as bu
import torch

RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = ("run_id", "provider", "mode", "K", "N", "d", "V", "round", "dtype", "seconds")
COLUMNS += ("threads", "machine", "version", "date")
# Issue 3's two goal points, forward + backward.
POINTS = ((2, 4096, 64, 20_000), (1, 4096, 64, 100_000))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--provider", default="fused", choices=("fused", "torch_ce", "floor"))
    parser.add_argument("--rounds", type=int, default=8, help="A B B A rounds after a warm-up")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--point", nargs=4, type=int, action="append", metavar=("K", "N", "d", "V"))
    parser.add_argument("--csv", type=Path, default=RESULTS / "dtype_ab.csv")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if args.provider == "torch_ce" and any(p[0] != 1 for p in args.point or POINTS):
        parser.error("--provider torch_ce has no peers: give only points with K = 1")
    return args


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    context = bu.run_context("cpu", args.threads)
    rows = []
    for K, N, d, V in args.point or POINTS:
        calls = {name: _call(args.provider, bu.Point(K, N, d, V, name)) for name in bu.DTYPES}
        for step in calls.values():  # warm-up: first-call allocations, thread pool start
            step()
        times = {name: [] for name in calls}
        for round_ in range(args.rounds):
            order = ("float32", "bfloat16") if round_ % 2 == 0 else ("bfloat16", "float32")
            for name in order + order[::-1]:
                times[name].append(_timed(calls[name]))
        point = {"provider": args.provider, "mode": "forward+backward", "K": K, "N": N, "d": d}
        point["V"] = V
        point["threads"] = torch.get_num_threads()
        for name, seconds in times.items():
            for index, value in enumerate(seconds):
                rows.append({**context, **point, "round": index // 2, "dtype": name,
                             "seconds": f"{value:.6f}"})  # fmt: skip
        _report(point, times)
    _append(args.csv, rows)
    return 0


def _call(provider: str, point: bu.Point):
    if provider == "floor":
        hidden, item_weight, _ = bu.make_inputs(point, "cpu")
        return lambda: bu.floor_step(hidden, item_weight, backward=True)
    hidden, item_weight, target = bu.make_inputs(point, "cpu")
    hidden.requires_grad_(True)
    item_weight.requires_grad_(True)
    loss_fn = bu.make_provider(provider)
    return lambda: bu.run_step(loss_fn, hidden, item_weight, target, backward=True)


def _timed(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def _report(point: dict, times: dict[str, list[float]]) -> None:
    """Each dtype's spread, and the spread of bfloat16 / float32 over the rounds' pairs."""
    pairs = [b / f for f, b in zip(times["float32"], times["bfloat16"], strict=True)]
    figures = {**{name: sorted(values) for name, values in times.items()}, "ratio": sorted(pairs)}
    where = ", ".join(f"{key}={value}" for key, value in point.items() if key != "threads")
    print(where)
    for name, values in figures.items():
        unit = "" if name == "ratio" else " s"
        quantiles = statistics.quantiles(values, n=5) if len(values) > 1 else values * 4
        p20, p80 = quantiles[0], quantiles[-1]
        median = statistics.median(values)
        print(f"  {name:>9}: p20 {p20:.3f}{unit}  p50 {median:.3f}{unit}  p80 {p80:.3f}{unit}")


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
