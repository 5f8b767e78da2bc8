"""Quality benchmark (issue 5): does HAIL's K peers beat the same network trained alone?

Trains, with one encoder, budget and set of seeds, the single network (K=1) and HAIL with K
peers, each run a `hail train` in its own process; collects the test metrics (full ranking and
sampled-99, each peer, their mean and the ensemble) of every run's metrics.json into long-format
CSV rows, then writes a Markdown summary (mean +- std over seeds) and a plot. `--ablation` runs
MED's knobs instead: alpha 1 (no MED), each of MED's two terms alone, gamma 2, beta 0.01 and
0.02 beside the default.

Model selection is the trainer's own: the epoch of best validation NDCG@10 (ensemble, full
ranking); the test split is only read. Finished runs are reused (the run directory is named by
a hash of its settings), so a killed benchmark restarts where it stopped.

    python benchmarks/quality_bench.py --data nyc16 --model sasrec --keep-history --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import datetime
import hashlib
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from matplotlib.figure import Figure

logger = logging.getLogger("quality_bench")

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

# (label, alpha, gamma, beta[, med_terms]): MED's knobs, and its two terms one at a time
# (hail_ext/train/med_terms.py).
DEFAULT_VARIANT = ("default", 0.5, 1.0, 0.0)
ABLATION = (
    ("alpha=1 (CE only)", 1.0, 1.0, 0.0),
    DEFAULT_VARIANT,
    ("MED target term only", 0.5, 1.0, 0.0, "target"),
    ("MED push term only", 0.5, 1.0, 0.0, "push"),
    ("gamma=2", 0.5, 2.0, 0.0),
    ("beta=0.01", 0.5, 1.0, 0.01),
    ("beta=0.02", 0.5, 1.0, 0.02),
)
# The budget: settings every run of one benchmark shares, recorded in each CSV row.
BUDGET = ("epochs", "patience", "max_len", "dim", "layers", "heads", "dropout", "batch_size", "lr")
COLUMNS = (
    ("run", "model", "data", "K", "seed", "variant", "alpha", "gamma", "beta", "keep_history")
    + ("split", "protocol", "who", "metric", "value")
    + BUDGET
    + ("mask_prob",)
    + ("epochs_run", "best_epoch", "train_s", "wall_s", "threads", "machine", "commit", "date")
)
SUMMARY_METRICS = ("ndcg@10", "hr@10")


def main(argv: list | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    runs = plan(args)
    logger.info("%d runs of %s on %s", len(runs), args.model, args.data)
    started = time.perf_counter()
    rows, failed = [], 0
    jobs = 1 if args.in_process else args.jobs
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        for done in pool.map(lambda run: _train_or_log(run, args), runs):
            rows += done or []
            failed += done is None
    logger.info("%d runs done in %.0f s", len(runs) - failed, time.perf_counter() - started)

    csv_path = args.results / "quality.csv"
    all_rows = merge_csv(csv_path, rows)
    summary = summarise(all_rows)
    (args.results / "quality_summary.md").write_text(summary, encoding="utf-8")
    plot(all_rows, args.results / "quality.png")
    print(summary)
    return 1 if failed else 0


# -- what to run --------------------------------------------------------------------------------


def plan(args: argparse.Namespace) -> list[dict]:
    """One dict of `hail train` settings per run, K and variant outermost, seeds innermost."""
    shared = {name: getattr(args, name) for name in BUDGET}
    shared.update(data=args.data, model=args.model, keep_history=args.keep_history)
    suffix = ""
    if args.per_peer_items:  # only then in the settings, so earlier runs keep their directories
        shared["shared_items"], suffix = False, ", per-peer items"
    if args.mask_prob is not None:  # BERT4Rec's cloze masking; likewise only when given
        shared["mask_prob"] = args.mask_prob
    if args.ablation:
        chosen = args.variants or [variant[0] for variant in ABLATION]
        variants = [variant for variant in ABLATION if variant[0] in chosen]
        peers = [args.ablation_peers]
    else:
        variants, peers = [(_label(_loss(args)),) + _loss(args)], args.peers
    runs = []
    for label, alpha, gamma, beta, *terms in variants:
        for k in peers:
            for seed in args.seeds:
                settings = {**shared, "peers": k, "alpha": alpha, "gamma": gamma, "beta": beta}
                if terms:  # only then in the settings, so earlier runs keep their directories
                    settings["med_terms"] = terms[0]
                settings["seed"] = seed
                run = {"variant": label + suffix, "settings": settings}
                runs.append({**run, "dir": run_dir(args, settings)})
    return runs


def _loss(args) -> tuple:
    return (args.alpha, args.gamma, args.beta)


def _label(loss: tuple) -> str:
    """The ablation's name for these (alpha, gamma, beta), so that runs of both modes group."""
    return next((v[0] for v in ABLATION if len(v) == 4 and tuple(v[1:]) == loss), "custom")


def run_dir(args: argparse.Namespace, settings: dict) -> Path:
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    name = f"{settings['model']}-{Path(settings['data']).stem}-K{settings['peers']}"
    return args.runs / f"{name}-s{settings['seed']}-{digest}"


# -- running one --------------------------------------------------------------------------------


def train(run: dict, args: argparse.Namespace) -> list[dict]:
    """Train one run in a fresh process (unless its metrics exist) and return its CSV rows."""
    out, settings = run["dir"], run["settings"]
    metrics_file = out / "metrics.json"
    wall = float("nan")
    if not metrics_file.is_file() and args.in_process:
        wall = _train_here(settings, out, args.threads)
    elif not metrics_file.is_file():
        command = [sys.executable, "-m", "hail_ext", "--log-level", "WARNING", "train"]
        command += _flags(settings) + ["--out", str(out), "--no-progress"]
        if (out / "checkpoint.pt").is_file():
            command.append("--resume")
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        env["MKL_NUM_THREADS"] = env["OMP_NUM_THREADS"]
        logger.info("start %s", out.name)
        start = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"{out.name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        (out / "wall_s.txt").write_text(f"{wall:.1f}\n")
        logger.info("done  %s in %.0f s", out.name, wall)
    elif (out / "wall_s.txt").is_file():
        wall = float((out / "wall_s.txt").read_text())
    return collect(run, json.loads(metrics_file.read_text()), wall, args.threads)


def _train_or_log(run: dict, args: argparse.Namespace) -> list[dict] | None:
    """A failed run is logged and left out, so that the others still reach the CSV."""
    try:
        return train(run, args)
    except (RuntimeError, ValueError, OSError) as error:
        logger.error("%s: %s", run["dir"].name, error)
        return None


def _train_here(settings: dict, out: Path, threads: int) -> float:
    """The same run through the trainer's Python API, in this process (no start-up cost)."""
    import torch

    from hail_ext.train.config import TrainConfig
    from hail_ext.train.trainer import Trainer

    torch.set_num_threads(threads)
    start = time.perf_counter()
    Trainer(TrainConfig.from_dict({**settings, "progress": False}), out).fit(resume=True)
    wall = time.perf_counter() - start
    (out / "wall_s.txt").write_text(f"{wall:.1f}\n")
    return wall


def _flags(settings: dict) -> list[str]:
    flags = []
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        if name == "shared_items":
            flags += [] if value else ["--per-peer-items"]
        elif isinstance(value, bool):
            flags += [flag] if value else []
        else:
            flags += [flag, str(value)]
    return flags


def collect(run: dict, metrics: dict, wall: float, threads: int) -> list[dict]:
    """Long-format rows of one run: every split, protocol, view (peers, their mean, the
    ensemble) and metric, each with the run's settings and cost."""
    settings, out = run["settings"], run["dir"]
    epochs = _read_history(out / "history.csv")
    best = max(epochs, key=lambda row: float(row["valid_ndcg@10_ensemble"]))
    common = {name: settings[name] for name in COLUMNS if name in settings}
    common |= {
        "run": out.name,
        "data": Path(settings["data"]).stem,
        "K": settings["peers"],
        "variant": run["variant"],
        "epochs_run": len(epochs),
        "best_epoch": best["epoch"],
        "train_s": round(sum(float(row["seconds"]) for row in epochs), 1),
        "wall_s": round(wall, 1),
        "threads": threads,
        "machine": _machine(),
        "commit": _commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    rows = []
    for split in ("test", "valid"):
        for protocol, views in metrics[split].items():
            peers = [views[f"peer{k}"] for k in range(settings["peers"])]
            views = {
                **views,
                "peer_mean": {m: statistics.fmean(p[m] for p in peers) for m in peers[0]},
            }
            for who, values in views.items():
                for metric, value in values.items():
                    keys = {"split": split, "protocol": protocol, "who": who, "metric": metric}
                    rows.append({**common, **keys, "value": round(value, 6)})
    return rows


def _read_history(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _machine() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if "model name" in line]
    except OSError:
        names = []
    cpu = names[0] if names else "unknown CPU"
    return f"{cpu} ({len(os.sched_getaffinity(0))} cores)"


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else ""


# -- results ------------------------------------------------------------------------------------


def merge_csv(path: Path, rows: list[dict]) -> list[dict]:
    """Write `rows` into the CSV at `path`, replacing the earlier rows of the same runs, and
    return everything it then holds (as strings, the way it reads back)."""
    kept = []
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as handle:
            kept = list(csv.DictReader(handle))
    fresh = {row["run"] for row in rows}
    kept = [row for row in kept if row["run"] not in fresh]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(kept + rows)
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def aggregate(rows: list[dict]) -> dict:
    """{(setup, variant, K): {(protocol, who, metric): [value per seed]}, "train_s": [...]}
    over the test rows; `setup` is (model, data, keep_history, budget)."""
    groups: dict = {}
    for row in rows:
        if row["split"] != "test" or row["metric"] not in SUMMARY_METRICS:
            continue
        setup = (row["model"], row["data"], row["keep_history"], _budget(row))
        variant = (row["variant"], row["alpha"], row["gamma"], row["beta"])
        group = groups.setdefault((setup, variant, int(row["K"])), {"train_s": {}, "best": {}})
        key = (row["protocol"], row["who"], row["metric"])
        group.setdefault(key, []).append(float(row["value"]))
        group.setdefault(("by seed", *key), {})[row["seed"]] = float(row["value"])
        group["train_s"][row["seed"]] = float(row["train_s"])
        group["best"][row["seed"]] = f"{row['best_epoch']}/{row['epochs_run']}"
    return groups


def _budget(row: dict) -> str:
    names = BUDGET + (("mask_prob",) if row.get("mask_prob") else ())
    return ", ".join(f"{name} {row[name]}" for name in names)


def _mean_std(values: list) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(rows: list[dict]) -> str:
    """Markdown: a table per setup (mean +- std over seeds) and the verdict of each K > 1."""
    groups = aggregate(rows)
    columns = [
        ("full", "peer_mean", "ndcg@10"),
        ("full", "ensemble", "ndcg@10"),
        ("full", "peer_mean", "hr@10"),
        ("full", "ensemble", "hr@10"),
        ("sampled", "peer_mean", "ndcg@10"),
        ("sampled", "peer_mean", "hr@10"),
    ]
    header = ["variant", "K", "seeds"] + [f"{p} {m.upper()} {w}" for p, w, m in columns]
    lines = ["# Quality benchmark: HAIL peers against a single network", ""]
    lines.append("Test split, mean ± std over seeds; `peer_mean` is the mean of the K peers' own")
    lines.append("metrics (each peer ranks alone), `ensemble` ranks by their mean log-probability.")
    for setup in sorted({key[0] for key in groups}):
        model, data, keep, budget = setup
        history = "keeps the history" if keep == "True" else "filters the history"
        lines += ["", f"## {model} on {data} (full ranking {history})", "", f"Budget: {budget}."]
        extra = ["best epoch/run", "train s/run"]
        lines += ["", "| " + " | ".join(header + extra) + " |"]
        lines.append("|" + " --- |" * (len(header) + len(extra)))
        keys = sorted((key for key in groups if key[0] == setup), key=lambda k: (k[1][0], k[2]))
        for key in keys:
            group, (label, *_) = groups[key], key[1]
            seeds = len(group["train_s"])
            cells = [label, str(key[2]), str(seeds)]
            cells += [_cell(group.get(column, [])) for column in columns]
            cells.append(" ".join(group["best"][seed] for seed in sorted(group["best"])))
            cells.append(f"{statistics.fmean(group['train_s'].values()):.0f}")
            lines.append("| " + " | ".join(cells) + " |")
        lines += [""] + verdicts(groups, setup)
    return "\n".join(lines) + "\n"


def _cell(values: list) -> str:
    if not values:
        return "-"
    mean, std = _mean_std(values)
    return f"{mean:.4f} ± {std:.4f}" if len(values) > 1 else f"{mean:.4f}"


def verdicts(groups: dict, setup: tuple) -> list[str]:
    """Each variant with K > 1 against the single network, on the peers' full-ranking metrics.

    A gain counts only when the means differ by more than the two standard deviations together.
    The paired difference (same seed: same data order) is given beside it, for what it is worth.
    """
    default = tuple(str(v) for v in DEFAULT_VARIANT)
    single = next((g for (s, v, k), g in groups.items() if (s, k) == (setup, 1)), None)
    if single is None:
        return []
    lines = []
    for (s, variant, k), group in sorted(groups.items(), key=lambda item: item[0][1:]):
        if s != setup or k == 1:
            continue
        parts = [_compare(single, group, metric) for metric in SUMMARY_METRICS]
        name = f"K={k}" + ("" if _same(variant, default) else f" {variant[0]}")
        lines.append(f"- {name} vs K=1, full ranking, peers' mean: " + "; ".join(parts) + ".")
    return lines


def _compare(single: dict, group: dict, metric: str) -> str:
    key = ("full", "peer_mean", metric)
    (m1, s1), (mk, sk) = _mean_std(single[key]), _mean_std(group[key])
    before, after = single[("by seed", *key)], group[("by seed", *key)]
    paired = [after[seed] - before[seed] for seed in sorted(set(before) & set(after))]
    if min(len(single[key]), len(group[key])) < 2:
        same = f"; same seed {paired[0]:+.4f}" if paired else ""
        return f"{metric.upper()} {mk - m1:+.4f} (one seed, no spread{same})"
    word = "beats K=1" if mk - m1 > s1 + sk else "does not beat K=1"
    text = f"{metric.upper()} {mk - m1:+.4f} (spread {s1 + sk:.4f}): {word}"
    if len(paired) > 1:
        mean, std = _mean_std(paired)
        text += f", paired over {len(paired)} seeds {mean:+.4f} ± {std:.4f}"
    return text


def _same(variant: tuple, default: tuple) -> bool:
    return variant[0] == default[0] and all(
        float(a) == float(b) for a, b in zip(variant[1:], default[1:], strict=True)
    )


def plot(rows: list[dict], path: Path) -> None:
    """NDCG@10 and HR@10 (full ranking, test) against K, of the default loss, as the change from
    the same setup's single network in percent (mean with std bars, both over seeds, scaled by
    the K = 1 mean), so that setups of very different levels share one axis: the peers' mean
    solid, the ensemble dashed, one colour per setup. Setups without a K = 1 run are left out."""
    groups = aggregate(rows)
    default = tuple(str(v) for v in DEFAULT_VARIANT)
    setups = sorted({s for (s, v, k) in groups if _same(v, default) and k == 1})
    figure = Figure(figsize=(10, 4), layout="constrained")
    for axes, metric in zip(figure.subplots(1, 2), SUMMARY_METRICS, strict=True):
        for index, setup in enumerate(setups):
            ks = sorted(k for (s, v, k) in groups if s == setup and _same(v, default))
            single, _ = _mean_std(
                groups[(setup, _key(groups, setup, 1), 1)][("full", "peer_mean", metric)]
            )
            for who, style in (("peer_mean", "-"), ("ensemble", "--")):
                stats = [
                    _mean_std(groups[(setup, _key(groups, setup, k), k)][("full", who, metric)])
                    for k in ks
                ]
                axes.errorbar(
                    [k + 0.04 * (who == "ensemble") for k in ks],
                    [100.0 * (mean / single - 1.0) for mean, _ in stats],
                    yerr=[100.0 * std / single for _, std in stats],
                    linestyle=style,
                    marker="o" if who == "peer_mean" else "s",
                    markerfacecolor=f"C{index}" if who == "peer_mean" else "none",
                    capsize=3,
                    color=f"C{index}",
                    label=f"{setup[0]} {setup[1]} ({setup[3].split(',')[0]}), {who}",
                )
        axes.axhline(0.0, color="grey", linewidth=0.8)
        axes.set(
            xlabel="K (peers; 1 = single network)",
            ylabel=f"test {metric.upper()} (full): % change from K=1",
        )
        axes.set_xticks(sorted({k for (_s, _v, k) in groups}))
        axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def _key(groups: dict, setup: tuple, k: int) -> tuple:
    default = tuple(str(v) for v in DEFAULT_VARIANT)
    return next(v for (s, v, kk) in groups if s == setup and kk == k and _same(v, default))


# -- command line -------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="nyc16", help="nyc16 (built in) or a file path")
    parser.add_argument("--model", default="sasrec", choices=("sasrec", "bert4rec", "gru4rec"))
    parser.add_argument("--peers", type=int, nargs="+", default=[1, 2, 3], help="values of K")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ablation", action="store_true", help="run the MED ablation instead")
    parser.add_argument("--ablation-peers", type=int, default=2, help="K of the ablation")
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=[variant[0] for variant in ABLATION],
        metavar="LABEL",
        help="with --ablation, run only these variants (default: all)",
    )
    parser.add_argument("--alpha", type=float, default=DEFAULT_VARIANT[1])
    parser.add_argument("--gamma", type=float, default=DEFAULT_VARIANT[2])
    parser.add_argument("--beta", type=float, default=DEFAULT_VARIANT[3])
    parser.add_argument(
        "--keep-history",
        action="store_true",
        help="full ranking keeps the user's history (right for repeat consumption: nyc16)",
    )
    parser.add_argument(
        "--per-peer-items", action="store_true", help="each peer its own item table"
    )
    budget = parser.add_argument_group("budget (the same for every run)")
    budget.add_argument("--epochs", type=int, default=8)
    budget.add_argument("--patience", type=int, default=3, help="early stopping, epochs")
    budget.add_argument("--max-len", type=int, default=50)
    budget.add_argument("--dim", type=int, default=64)
    budget.add_argument("--layers", type=int, default=2)
    budget.add_argument("--heads", type=int, default=2)
    budget.add_argument("--dropout", type=float, default=0.2)
    budget.add_argument("--batch-size", type=int, default=128)
    budget.add_argument("--lr", type=float, default=1e-3)
    budget.add_argument(
        "--mask-prob", type=float, help="BERT4Rec: share of items masked (trainer default 0.2)"
    )
    where = parser.add_argument_group("where and how")
    where.add_argument("--jobs", type=int, default=1, help="runs at once, each in a process")
    where.add_argument(
        "--in-process", action="store_true", help="train here, one run after another (tests)"
    )
    where.add_argument("--threads", type=int, default=2, help="torch threads per run")
    where.add_argument("--runs", type=Path, default=ROOT / "runs" / "quality", help="run dirs")
    where.add_argument("--results", type=Path, default=RESULTS, help="CSV, summary, plot")
    return parser


if __name__ == "__main__":
    sys.exit(main())
