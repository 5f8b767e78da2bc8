"""The `hail` command: `hail train ...` and `hail evaluate ...` (also `python -m hail_ext`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from hail_ext.models.peers import ENCODERS
from hail_ext.train.med_terms import MED_TERMS
from hail_ext.train.schedules import ALPHA_SCHEDULES

TABLE_METRICS = ("hr@10", "ndcg@10", "mrr@10", "hr@20", "ndcg@20")


def main(argv: list | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as error:
        logging.getLogger("hail_ext").debug("failed", exc_info=True)
        print(f"hail: error: {error}", file=sys.stderr)
        return 2
    finally:
        from hail_ext.train import distributed

        distributed.teardown()


def train(args: argparse.Namespace) -> int:
    from hail_ext.train.config import TrainConfig, read_config_file
    from hail_ext.train.trainer import Trainer

    values = read_config_file(args.config) if args.config else {}
    source = args.config or "config"
    # Flags left out are absent from `args` (argparse.SUPPRESS); every given one that names a
    # setting overrides the file.
    for field in dataclasses.fields(TrainConfig):
        if hasattr(args, field.name):
            values[field.name] = getattr(args, field.name)
    config = TrainConfig.from_dict(values, source=source)
    metrics = Trainer(config, args.out).fit(resume=args.resume)
    if metrics:
        print(format_table(metrics["test"], f"test ({config.model}, K={config.peers})"))
        print(f"\nresults in {args.out}/metrics.json")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from hail_ext.data import leave_one_out
    from hail_ext.eval import build_eval_set
    from hail_ext.eval import evaluate as run_evaluation
    from hail_ext.train import checkpoint, distributed
    from hail_ext.train.config import TrainConfig
    from hail_ext.train.trainer import build_model, load_data

    saved = checkpoint.load(args.checkpoint)
    config = TrainConfig.from_dict({**saved["config"], "data": args.data})
    interactions = load_data(config)
    if list(interactions.item_ids) != list(saved["item_ids"]):
        raise ValueError(
            f"{args.data} does not hold the items that {args.checkpoint} was "
            "trained on (the item ids differ); evaluate on the training data set"
        )
    model = build_model(config, interactions.num_items)
    model.load_state_dict(saved["model"])
    device = distributed.available(args.device or "cpu")
    model.to(device)
    split = leave_one_out(interactions)
    keep = config.keep_history if args.keep_history is None else args.keep_history
    metrics = {}
    for which in ("test", "valid"):
        eval_set = build_eval_set(split, which, config.max_len, model.mask_token, config.seed)
        metrics[which] = run_evaluation(
            model, eval_set, batch_size=config.eval_batch_size, device=device, keep_history=keep
        )
    metrics["config"] = {**config.to_dict(), "keep_history": keep}
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(format_table(metrics["test"], f"test ({config.model}, K={config.peers})"))
    return 0


def format_table(results: dict, title: str) -> str:
    """A plain-text table: one line per peer and the ensemble, for each protocol."""
    lines = [title]
    for protocol, views in results.items():
        lines.append("")
        lines.append(f"{protocol:<10}" + "".join(f"{m:>9}" for m in TABLE_METRICS))
        for name, values in views.items():
            lines.append(f"{name:<10}" + "".join(f"{values[m]:>9.4f}" for m in TABLE_METRICS))
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hail", description=__doc__)
    parser.add_argument(
        "--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR")
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    run = commands.add_parser(
        "train", help="train K peers with the HAIL loss", argument_default=argparse.SUPPRESS
    )
    run.set_defaults(run=train)
    run.add_argument("--out", required=True, help="directory for checkpoints, logs, metrics")
    run.add_argument("--config", default=None, help="YAML or TOML file of settings; flags win")
    run.add_argument(
        "--resume", action="store_true", default=False, help="continue the run saved in --out"
    )
    run.add_argument("--data", help="built-in data set name (nyc16) or a file path")
    run.add_argument("--format", choices=("lines", "inter", "csv"), help="default: from name")
    run.add_argument("--user-col", help="CSV user column (user_id)")
    run.add_argument("--item-col", help="CSV item column (item_id)")
    run.add_argument("--time-col", help="CSV timestamp column (timestamp)")
    run.add_argument("--k-core", type=int, help="drop users/items with fewer interactions")
    run.add_argument("--model", choices=sorted(ENCODERS))
    run.add_argument("--peers", type=int, help="K, the number of peers (1 = single network)")
    run.add_argument(
        "--per-peer-items",
        dest="shared_items",
        action="store_false",
        help="give each peer its own item table (default: one shared table)",
    )
    run.add_argument("--no-item-bias", dest="item_bias", action="store_false")
    run.add_argument("--dim", type=int)
    run.add_argument("--layers", type=int)
    run.add_argument("--heads", type=int)
    run.add_argument("--dropout", type=float)
    run.add_argument("--max-len", type=int)
    run.add_argument("--mask-prob", type=float, help="cloze masking rate of BERT4Rec")
    run.add_argument("--epochs", type=int)
    run.add_argument("--batch-size", type=int, help="per process")
    run.add_argument("--lr", type=float)
    run.add_argument("--weight-decay", type=float)
    run.add_argument("--warmup", type=float, help="fraction of steps of learning-rate warm-up")
    run.add_argument("--clip-norm", type=float, help="gradient norm clip (0 = off)")
    run.add_argument("--alpha", type=float, help="weight of cross-entropy against MED")
    run.add_argument("--alpha-schedule", choices=ALPHA_SCHEDULES)
    run.add_argument("--alpha-warmup", type=float, help="fraction of steps to reach --alpha")
    run.add_argument("--gamma", type=float)
    run.add_argument("--beta", type=float, help="fraction of hardest rows that may be dropped")
    run.add_argument(
        "--med-terms", choices=MED_TERMS, help="MED terms to keep (ablation; default both)"
    )
    run.add_argument("--patience", type=int, help="early-stopping patience in epochs (0 = off)")
    run.add_argument(
        "--keep-history",
        action="store_true",
        help="full ranking keeps items of the user's history (default: filtered)",
    )
    run.add_argument("--seed", type=int)
    run.add_argument("--device", help="cpu, cuda, cuda:1, ...")
    run.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    run.add_argument("--no-progress", dest="progress", action="store_false")

    check = commands.add_parser("evaluate", help="evaluate a checkpoint on a data set")
    check.set_defaults(run=evaluate)
    check.add_argument("--checkpoint", required=True, help="best.pt of a training run")
    check.add_argument("--data", required=True, help="the data set it was trained on")
    check.add_argument("--out", default=None, help="directory to write metrics.json into")
    check.add_argument(
        "--keep-history",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="full ranking keeps (or, with --no-keep-history, filters) the user's history "
        "(default: as the checkpoint was trained)",
    )
    check.add_argument("--device", default=None)
    return parser
