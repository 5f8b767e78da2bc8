"""Print one run of `loss_bench.py` as a Markdown table, with time ratios from the same run.

    python benchmarks/loss_table.py benchmarks/results/loss.csv            # the latest run
    python benchmarks/loss_table.py benchmarks/results/loss.csv --run-id 20260101-120000

Columns: median time with its 20th-80th percentile range, peak memory over the inputs, and
`time / floor` (how far above the plain matrix products), `reference / time` and
`compiled / time` (how many times faster than the pure-PyTorch loss and its torch.compile).
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path

POINT = ("K", "N", "d", "V", "dtype", "mode")


def read_run(path: Path, run_id: str | None = None) -> list[dict]:
    """The rows of one run (the last one in the file when `run_id` is None)."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ValueError(f"{path} holds no rows")
    run_id = run_id or rows[-1]["run_id"]
    chosen = [row for row in rows if row["run_id"] == run_id]
    if not chosen:
        raise ValueError(
            f"run {run_id!r} not in {path}; it holds {sorted({r['run_id'] for r in rows})}"
        )
    return chosen


def figures(rows: list[dict]) -> dict:
    """{(point..., provider): {metric: value or status}}, in the order of the run."""
    table: dict[tuple, dict] = defaultdict(dict)
    for row in rows:
        key = (*(row[name] for name in POINT), row["provider"])
        table[key][row["metric"]] = float(row["value"]) if row["status"] == "ok" else row["status"]
    return table


def markdown(rows: list[dict]) -> str:
    first = rows[0]
    lines = [
        f"Run {first['run_id']} on {first['machine']} ({first['device']}), hail_ext "
        f"{first['version']}, torch {first['torch_version']}, {first['date']}.",
        "",
        "| K | N | d | V | dtype | mode | provider | time ms (p20-p80) | peak MiB "
        "| time / floor | reference / time | compiled / time |",
        "|" + "---|" * 12,
    ]
    table = figures(rows)
    for key, values in table.items():
        point, provider = key[:-1], key[-1]
        time = values.get("time_p50")
        ratios = [_ratio(time, table.get((*point, "floor"), {}).get("time_p50"))]
        for other in ("reference", "compiled"):
            ratios.append(_ratio(table.get((*point, other), {}).get("time_p50"), time))
        cells = [*point, provider, _time_cell(values), _number(values.get("peak_mem")), *ratios]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines)


def _time_cell(values: dict) -> str:
    time = values.get("time_p50")
    if not isinstance(time, float):
        return str(time or values.get("rel_err_loss", "-"))
    return f"{time:.4g} ({values['time_p20']:.4g}-{values['time_p80']:.4g})"


def _number(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value or "-")


def _ratio(numerator, denominator) -> str:
    if not isinstance(numerator, float) or not isinstance(denominator, float) or not denominator:
        return "-"
    return f"{numerator / denominator:.2f}x"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", type=Path, help="a CSV written by loss_bench.py")
    parser.add_argument("--run-id", help="which run (default: the last in the file)")
    args = parser.parse_args(argv)
    print(markdown(read_run(args.csv, args.run_id)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
