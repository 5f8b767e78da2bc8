"""Draw one run of `loss_bench.py`: time and peak memory against V, per provider (PNG).

    python benchmarks/plot_loss.py benchmarks/results/loss.csv [--run-id ID] [--out loss.png]

One row of panels per (K, N, d, mode, dtype) group: median time with its 20th-80th percentile
band on the left, peak memory over the inputs on the right, both on log-log axes. A provider
that could not run a size says so in the legend ("oom at V=1e+06").
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from loss_table import read_run  # noqa: E402

GROUP = ("K", "N", "d", "mode", "dtype")
# One colour per provider in every panel, in loss_bench's order of providers.
COLOURS = dict(
    zip(
        ["fused", "reference", "compiled", "torch_chunked", "torch_ce", "floor"],
        plt.cm.tab10.colors[:6],
        strict=True,
    )
)
PANELS = (("time_p50", "time (ms)"), ("peak_mem", "peak memory over inputs (MiB)"))


def series(rows: list[dict]) -> dict:
    """{group: {provider: {"metric": {V: value}, "status": {V: status}}}}."""
    out: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    for row in rows:
        group = tuple(row[name] for name in GROUP)
        curves = out[group][row["provider"]]
        if row["status"] == "ok":
            curves[row["metric"]][int(row["V"])] = float(row["value"])
        else:
            curves["status"][int(row["V"])] = row["status"]
    return out


def draw(rows: list[dict], out: Path) -> None:
    groups = series(rows)
    fig, axes = plt.subplots(len(groups), 2, figsize=(11, 3.6 * len(groups)), squeeze=False)
    for (group, providers), row_axes in zip(groups.items(), axes, strict=True):
        title = ", ".join(f"{name}={value}" for name, value in zip(GROUP, group, strict=True))
        for (metric, label), ax in zip(PANELS, row_axes, strict=True):
            for provider, curves in providers.items():
                _curve(ax, provider, curves, metric)
            ax.set(xscale="log", yscale="log", xlabel="V (items)", ylabel=label)
            ax.set_title(title, fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    first = rows[0]
    fig.suptitle(f"hail_ext {first['version']} on {first['machine']}, run {first['run_id']}")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _curve(ax, provider: str, curves: dict, metric: str) -> None:
    points = sorted(curves[metric].items())
    label = provider + "".join(f", {s} at V={v:.0e}" for v, s in sorted(curves["status"].items()))
    if not points:
        ax.plot([], [], color=COLOURS.get(provider), label=label)
        return
    sizes, values = zip(*points, strict=True)
    (line,) = ax.plot(sizes, values, marker="o", color=COLOURS.get(provider), label=label)
    if metric == "time_p50":
        low = [curves["time_p20"].get(v, value) for v, value in points]
        high = [curves["time_p80"].get(v, value) for v, value in points]
        ax.fill_between(sizes, low, high, color=line.get_color(), alpha=0.2)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", type=Path, help="a CSV written by loss_bench.py")
    parser.add_argument("--run-id", help="which run (default: the last in the file)")
    parser.add_argument("--out", type=Path, help="PNG path (default: beside the CSV, per run)")
    args = parser.parse_args(argv)
    rows = read_run(args.csv, args.run_id)
    out = args.out or args.csv.with_name(f"{args.csv.stem}_{rows[0]['run_id']}.png")
    draw(rows, out)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
