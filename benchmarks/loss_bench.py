"""Speed and memory of the HAIL loss against every alternative, over a grid of sizes (issue 3).

Each provider is first checked against a float64 evaluation of `hail_ext.reference.med_loss`
on a slice of rows; the fused loss is timed only if it passes, PyTorch's alternatives are timed
anyway and marked inaccurate if they fail. Then, after warm-up, it is timed (20th/50th/80th
percentiles) and its peak memory over the inputs is measured, in a fresh process per point and
provider. Results are appended as long-format CSV rows.

    python benchmarks/loss_bench.py --preset goals
    python benchmarks/loss_bench.py --K 2 --N 4096 --d 64 --V 20000 50000 --dtypes float32
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import _bench_utils as bu

logger = logging.getLogger("loss_bench")

PRESETS = {
    "smoke": {
        "grids": [dict(K=[1, 2], N=[64], d=[16], V=[200], dtype=["float32"])],
        "providers": [p for p in bu.PROVIDERS if p != "compiled"],
        "rep_budget": 0.1,
        "max_reps": 3,
        "isolate": "point",
        "threads": 1,
    },
    "goals": {
        "grids": [
            dict(K=[2], N=[4096], d=[64], V=[20_000], dtype=["float32", "bfloat16"]),
            dict(K=[1], N=[4096], d=[64], V=[100_000], dtype=["float32", "bfloat16"]),
        ],
        "modes": ["forward+backward"],
        "rep_budget": 30.0,
        "max_reps": 20,
    },
    "sweep": {
        "grids": [
            dict(K=[1, 2, 3], N=[1024], d=[64], V=[1_000, 10_000, 100_000], dtype=["float32"]),
            dict(K=[1, 2], N=[512], d=[64], V=[1_000_000], dtype=["float32"]),
            dict(K=[2], N=[512, 4096, 16384], d=[64], V=[10_000], dtype=["float32"]),
            dict(K=[2], N=[1024], d=[128], V=[10_000, 100_000], dtype=["float32"]),
            # bfloat16 products run about 10x slower than float32 on CPUs without AVX-512 BF16.
            dict(K=[1, 2], N=[1024], d=[64], V=[1_000, 10_000], dtype=["bfloat16"]),
        ],
        "rep_budget": 4.0,
    },
    # Issue 6's goals on a GPU (--device cuda): K=1 in bfloat16 against the other fused
    # cross-entropies at an LLM-sized and a catalogue-sized point; K=2 against the reference.
    "gpu": {
        "grids": [
            dict(K=[1], N=[16384], d=[2048], V=[256_000], dtype=["bfloat16"]),
            dict(K=[1], N=[32768], d=[64], V=[1_000_000], dtype=["bfloat16"]),
            dict(K=[2], N=[4096], d=[64], V=[20_000, 300_000], dtype=["float32", "bfloat16"]),
        ],
        "providers": ["fused", "reference", "compiled", "torch_ce", "cce", "liger"],
        "modes": ["forward+backward"],
        "rep_budget": 3.0,
        "min_reps": 5,
        "max_reps": 50,
        "point_timeout": 240.0,
    },
}
MMAP_THRESHOLD = 1 << 20  # bytes; see _launch
MEMORY_FRACTION = 0.6  # of MemAvailable that one provider's estimated peak may take

DEFAULTS = {
    "providers": list(bu.PROVIDERS),
    "modes": list(bu.MODES),
    "rep_budget": 5.0,
    "min_reps": 3,
    "max_reps": 20,
    "isolate": "provider",
    "threads": None,
    "point_timeout": 600.0,
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS))
    for dim in ("K", "N", "d", "V"):
        parser.add_argument(f"--{dim}", type=int, nargs="+", help=f"values of {dim}")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(bu.DTYPES))
    parser.add_argument("--modes", nargs="+", choices=bu.MODES)
    parser.add_argument("--providers", nargs="+", choices=bu.PROVIDERS)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "loss.csv")
    parser.add_argument("--rep-budget", type=float, help="seconds of timed calls per mode")
    parser.add_argument("--min-reps", type=int)
    parser.add_argument("--max-reps", type=int)
    parser.add_argument(
        "--call-limit",
        type=float,
        default=60.0,
        help="a warm-up call slower than this (s) is recorded as a timeout",
    )
    parser.add_argument(
        "--point-timeout",
        type=float,
        help="hard limit (s) on one fresh process (default 600); what is missing is 'timeout'",
    )
    parser.add_argument(
        "--isolate",
        choices=["provider", "point"],
        help="one fresh process per point and provider (default) or per point",
    )
    parser.add_argument(
        "--compile-dynamic",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="torch.compile(dynamic=True): one graph serves the check and the run",
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--list", action="store_true", help="print the points and exit")
    parser.add_argument("--one-point", help=argparse.SUPPRESS)  # internal: the child process
    args = parser.parse_args(argv)
    _apply_preset(parser, args)
    return args


def _apply_preset(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    preset = PRESETS.get(args.preset, {})
    for name, value in {**DEFAULTS, **preset}.items():
        if name != "grids" and getattr(args, name) is None:
            setattr(args, name, value)
    explicit = {"K": args.K, "N": args.N, "d": args.d, "V": args.V, "dtype": args.dtypes}
    if args.one_point is None and not preset and None in explicit.values():
        parser.error("give --preset, or all of --K --N --d --V --dtypes")
    grids = preset.get("grids", [{}])
    args.grids = [{k: v or grid.get(k) for k, v in explicit.items()} for grid in grids]


def points(grids: list[dict]) -> list[bu.Point]:
    seen: dict[bu.Point, None] = {}
    for grid in grids:
        for values in itertools.product(*(grid[k] for k in ("K", "N", "d", "V", "dtype"))):
            seen[bu.Point(*values)] = None
    return list(seen)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.one_point is not None:
        return child(json.loads(args.one_point))

    grid = points(args.grids)
    if args.list:
        for point in grid:
            providers = [p for p in args.providers if bu.applies(p, point, args.device)]
            print(point, ", ".join(_memory_note(p, point, args.device) for p in providers))
        return 0
    context = bu.run_context(args.device, args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sidecar = args.out.with_name(f"{args.out.stem}_{context['run_id']}.json")
    sidecar.write_text(json.dumps({**context, "argv": sys.argv}, indent=2) + "\n")
    logger.info(
        "run %s on %s: %d points -> %s", context["run_id"], context["machine"], len(grid), args.out
    )

    start = time.monotonic()
    for index, point in enumerate(grid, 1):
        rows = [row for group in _groups(args, point) for row in _run_group(args, point, group)]
        bu.append_csv(args.out, [{**context, **row} for row in rows])
        logger.info(
            "[%d/%d] %s done, %.0f s so far", index, len(grid), point, time.monotonic() - start
        )
    return 0


def _groups(args, point: bu.Point) -> list[list[str]]:
    providers = [p for p in args.providers if bu.applies(p, point, args.device)]
    return [providers] if args.isolate == "point" else [[p] for p in providers]


def _fits(provider: str, point: bu.Point, device: str) -> bool:
    """Leave room for the rest of the machine: the estimate is rough, the OOM killer is not."""
    return bu.estimate_bytes(provider, point) <= MEMORY_FRACTION * bu.available_bytes(device)


def _memory_note(provider: str, point: bu.Point, device: str) -> str:
    note = f"{provider} ~{bu.estimate_bytes(provider, point) / 1e9:.2g} GB"
    return note if _fits(provider, point, device) else note + " (too big: oom)"


def _run_group(args, point: bu.Point, providers: list[str]) -> list[dict]:
    """Run some providers of one point in a fresh process; rows for every expected metric."""
    too_big = [p for p in providers if not _fits(p, point, args.device)]
    for name in too_big:
        logger.warning(
            "%s at %s: %s GB free; recorded as oom",
            point,
            _memory_note(name, point, args.device),
            f"{bu.available_bytes(args.device) / 1e9:.1f}",
        )
    to_run = [p for p in providers if p not in too_big]
    records, fallback = _launch(args, point, to_run) if to_run else ([], "oom")
    return complete(point, providers, args.modes, records, fallback, too_big)


def _launch(args, point: bu.Point, providers: list[str]) -> tuple[list[dict], str]:
    spec = {
        "point": point.key(),
        "providers": providers,
        "modes": args.modes,
        "device": args.device,
        "rep_budget": args.rep_budget,
        "min_reps": args.min_reps,
        "max_reps": args.max_reps,
        "call_limit": args.call_limit,
        "compile_dynamic": args.compile_dynamic,
        "threads": args.threads,
    }
    command = [sys.executable, __file__, "--one-point", json.dumps(spec)]
    # glibc serves blocks under a threshold that it raises as blocks are freed (up to 32 MiB)
    # from its heap, which keeps freed pages resident: peak RSS then swung by one gradient's
    # size from run to run. A fixed threshold maps every large block and unmaps it when freed.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=args.point_timeout, env=env
        )
    except subprocess.TimeoutExpired as expired:
        logger.warning("%s %s: stopped after %.0f s", point, providers, args.point_timeout)
        return parse_records(expired.stdout), "timeout"
    records = parse_records(done.stdout)
    if done.returncode != 0 or any(r["status"] not in ("ok", "inaccurate") for r in records):
        logger.warning(
            "%s %s: exit code %d, its log ends:\n%s",
            point,
            providers,
            done.returncode,
            _log_tail(done.stderr),
        )
    # SIGKILL without our asking it is the kernel's out-of-memory killer.
    return records, "oom" if done.returncode == -9 else "failed"


def _log_tail(stderr: str, lines: int = 30) -> str:
    """The child's own log lines (torch.compile's chatter left out)."""
    ours = [line for line in stderr.splitlines() if line[:1] not in ("W", "I", "V")]
    return "\n".join(ours[-lines:])


# ---- the fresh process: check, warm up, measure memory, time ------------------------------


def child(spec: dict) -> int:
    """Measure some providers at one point, printing one JSON record per figure as it comes."""
    import torch

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    point = bu.Point(**spec["point"])
    device = spec["device"]
    hidden, item_weight, target = bu.make_inputs(point, device)
    hidden.requires_grad_()
    item_weight.requires_grad_()
    for name in spec["providers"]:
        try:
            _measure(name, spec, point, (hidden, item_weight, target))
        except (torch.OutOfMemoryError, RuntimeError) as error:
            oom = isinstance(error, torch.OutOfMemoryError) or "allocate" in str(error)
            logger.exception("%s at %s failed", name, point)
            _emit(name, None, None, None, "", "oom" if oom else "failed")
        except Exception:
            logger.exception("%s at %s failed", name, point)
            _emit(name, None, None, None, "", "failed")
    return 0


def _measure(name: str, spec: dict, point: bu.Point, inputs) -> None:
    if name == "floor":
        call = lambda backward: bu.floor_step(*inputs[:2], backward)  # noqa: E731
    else:
        provider = bu.make_provider(name, spec["compile_dynamic"])
        if not _check(name, provider, point, inputs):
            return
        call = lambda backward: bu.run_step(provider, *inputs, backward)  # noqa: E731
    for mode in spec["modes"]:
        _measure_mode(name, mode, spec, functools.partial(call, mode != "forward"))


def _check(name: str, provider, point: bu.Point, inputs) -> bool:
    """The float64 check. Our loss must pass it to be timed; PyTorch's alternatives are what a
    user has whatever their accuracy, so they are timed anyway and their errors marked
    "inaccurate" (PyTorch's float32 gradients at 1e5 items are at about 2e-5)."""
    errors = bu.check_provider(provider, *inputs, bu.check_rows(point))
    tolerance = bu.TOLERANCE[point.dtype]
    accurate = max(errors.values()) <= tolerance
    status = "ok" if accurate else ("failed" if name == "fused" else "inaccurate")
    if not accurate:
        what = "not timed" if status == "failed" else "timed anyway"
        logger.warning("%s at %s: errors %s above %g; %s", name, point, errors, tolerance, what)
    _emit(name, None, "rel_err_loss", errors["loss"], "rel", status)
    _emit(name, "forward+backward", "rel_err_grad", errors["grad"], "rel", status)
    if status == "failed":
        _emit(name, None, None, None, "", "failed")
    return status != "failed"


def _measure_mode(name: str, mode: str, spec: dict, step) -> None:
    first = _timed(step, spec["device"])
    _emit(name, mode, "first_call", first * 1e3, "ms", "ok")
    if first > spec["call_limit"]:
        _emit(name, mode, None, None, "", "timeout")
        return

    baseline = bu.reset_peak_memory(spec["device"])
    step()
    peak = bu.peak_memory(spec["device"]) - baseline
    _emit(name, mode, "peak_mem", peak / 2**20, "MiB", "ok")

    reps = int(min(spec["max_reps"], max(spec["min_reps"], spec["rep_budget"] / first)))
    times = sorted(_timed(step, spec["device"]) for _ in range(reps))
    for q in (20, 50, 80):
        _emit(name, mode, f"time_p{q}", _percentile(times, q) * 1e3, "ms", "ok")
    _emit(name, mode, "reps", reps, "count", "ok")


def _timed(step, device: str) -> float:
    bu.synchronize(device)
    start = time.perf_counter()
    step()
    bu.synchronize(device)
    return time.perf_counter() - start


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default)."""
    position = (len(sorted_values) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def _emit(provider, mode, metric, value, unit, status) -> None:
    """One figure as a JSON line; metric None means 'every figure not yet given'."""
    record = {
        "provider": provider,
        "mode": mode,
        "metric": metric,
        "value": value,
        "unit": unit,
        "status": status,
    }
    print(json.dumps(record), flush=True)


# ---- back in the parent: every expected row, measured or not ------------------------------


def parse_records(stdout: str | bytes | None) -> list[dict]:
    if isinstance(stdout, bytes):
        stdout = stdout.decode(errors="replace")
    records = []
    for line in (stdout or "").splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


def complete(point, providers, modes, records, fallback: str, too_big) -> list[dict]:
    """A row for each provider, mode and metric: measured, or with the status that stopped it.

    A record with metric None stands for all the provider's figures still missing (in its
    mode, or every mode when its mode is None); figures never reported take `fallback`.
    """
    given = {(r["provider"], r["mode"], r["metric"]): r for r in records if r["metric"]}
    blanket = {(r["provider"], r["mode"]): r["status"] for r in records if not r["metric"]}
    rows = []
    for provider, mode in itertools.product(providers, modes):
        for metric, unit in bu.metrics(provider, mode):
            record = given.get((provider, mode, metric)) or given.get((provider, None, metric))
            if record is None:
                status = blanket.get((provider, mode)) or blanket.get((provider, None))
                status = "oom" if provider in too_big else status or fallback
                record = {"value": None, "unit": unit, "status": status}
            rows.append(
                {
                    "provider": provider,
                    "mode": mode,
                    **point.key(),
                    "metric": metric,
                    "unit": record["unit"] or unit,
                    "value": record["value"],
                    "status": record["status"],
                }
            )
    return rows


if __name__ == "__main__":
    sys.exit(main())
