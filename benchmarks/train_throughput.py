"""Training throughput of the trainer with the fused loss against the same trainer with the
pure-PyTorch loss (`hail_ext.reference.med_loss`), on the Amazon "Toys and Games" log.

Each (loss, K) runs in a fresh process, so that its peak resident memory is its own. Writes long
format rows to benchmarks/results/train_throughput.csv and prints a table.

    python benchmarks/train_throughput.py [--steps 10] [--peers 1 2] [--data PATH]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import platform
import resource
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "toys.txt"
RESULTS = ROOT / "benchmarks" / "results" / "train_throughput.csv"
LOSSES = ("fused", "reference")


def measure(args: argparse.Namespace) -> dict:
    """One (loss, K) in this process: time the trainer's steps."""
    import torch

    import hail_ext
    from hail_ext.train.config import TrainConfig
    from hail_ext.train.med_terms import full_loss
    from hail_ext.train.trainer import Trainer

    def reference(hidden, item_weight, target, **options):
        return hail_ext.reference.med_loss(hidden, item_weight, target, **options), None

    torch.set_num_threads(args.threads)
    config = TrainConfig(
        data=str(args.data),
        model=args.model,
        peers=args.one_peers,
        dim=args.dim,
        max_len=args.max_len,
        batch_size=args.batch_size,
        progress=False,
        device=args.device,
        seed=0,
    )
    loss_fn = full_loss if args.one_loss == "fused" else reference
    trainer = Trainer(config, ROOT / "benchmarks" / "results" / "tmp", loss_fn=loss_fn)
    timing = trainer.time_steps(args.steps, warmup=2)
    total = sum(timing["seconds"])
    return {
        "positions_per_s": timing["positions"] / total,
        "sequences_per_s": timing["sequences"] / total,
        "step_ms_p50": 1000 * statistics.median(timing["seconds"]),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "num_items": trainer.interactions.num_items,
        "torch": torch.__version__,
    }


UNITS = {
    "positions_per_s": "1/s",
    "sequences_per_s": "1/s",
    "step_ms_p50": "ms",
    "peak_rss_mib": "MiB",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--model", default="sasrec")
    parser.add_argument("--peers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-len", type=int, default=20)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--one-loss", choices=LOSSES, help=argparse.SUPPRESS)
    parser.add_argument("--one-peers", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one_loss:
        print(json.dumps(measure(args)))
        return

    rows, table = [], {}
    date = datetime.date.today().isoformat()
    for peers in args.peers:
        for loss in LOSSES:
            command = [
                sys.executable,
                __file__,
                "--one-loss",
                loss,
                "--one-peers",
                str(peers),
                *_passed_on(args),
            ]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            table[(peers, loss)] = result
            for metric, unit in UNITS.items():
                rows.append(
                    {
                        "benchmark": "train_throughput",
                        "provider": loss,
                        "peers": peers,
                        "model": args.model,
                        "data": args.data.name,
                        "num_items": result["num_items"],
                        "batch_size": args.batch_size,
                        "max_len": args.max_len,
                        "dim": args.dim,
                        "metric": metric,
                        "unit": unit,
                        "value": round(result[metric], 3),
                        "device": f"{args.device} ({platform.processor() or 'cpu'}, "
                        f"{args.threads} threads)",
                        "torch": result["torch"],
                        "date": date,
                    }
                )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    _print_table(table)
    print(f"\nwrote {RESULTS.relative_to(ROOT)}")


def _passed_on(args: argparse.Namespace) -> list:
    return [
        "--data",
        str(args.data),
        "--model",
        args.model,
        "--steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size),
        "--max-len",
        str(args.max_len),
        "--dim",
        str(args.dim),
        "--threads",
        str(args.threads),
        "--device",
        args.device,
    ]


def _print_table(table: dict) -> None:
    print(
        f"{'K':>2} {'loss':<10}{'positions/s':>13}{'step ms (p50)':>15}{'peak RSS MiB':>14}"
        f"{'speed-up':>10}"
    )
    for (peers, loss), result in table.items():
        base = table[(peers, "reference")]["positions_per_s"]
        print(
            f"{peers:>2} {loss:<10}{result['positions_per_s']:>13.0f}"
            f"{result['step_ms_p50']:>15.1f}{result['peak_rss_mib']:>14.0f}"
            f"{result['positions_per_s'] / base:>9.2f}x"
        )


if __name__ == "__main__":
    main()
