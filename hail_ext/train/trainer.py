"""The trainer: K peers against the HAIL loss, validated every epoch, checkpointed, resumable.

It calls only :func:`hail_ext.med_loss_with_stats` (or a loss of the same signature handed in,
such as the pure-PyTorch reference for benchmarks); it knows nothing of kernels.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from hail_ext import data as data_module
from hail_ext.data.batching import IGNORE, batches, cloze_examples, next_item_examples, shard_order
from hail_ext.data.batching import windows as cut_windows
from hail_ext.eval import build_eval_set, evaluate
from hail_ext.models import Peers
from hail_ext.train import checkpoint, distributed, history
from hail_ext.train.config import TrainConfig
from hail_ext.train.med_terms import med_terms_loss
from hail_ext.train.schedules import alpha_at, lr_factor

logger = logging.getLogger(__name__)

LAST, BEST = "checkpoint.pt", "best.pt"


class Trainer:
    """Train `config` into `out_dir`. `loss_fn(hidden, item_weight, target, *, bias, alpha,
    gamma, beta)` returns `(loss, stats or None)`; the default is the fused loss, with the MED
    terms that `config.med_terms` keeps.
    `interactions` skips reading `config.data` (for tests and notebooks)."""

    def __init__(
        self,
        config: TrainConfig,
        out_dir: str | Path,
        loss_fn=None,
        interactions=None,
        stop_after_epoch: int | None = None,
    ) -> None:
        self.config = config
        self.out = Path(out_dir)
        self.loss_fn = loss_fn if loss_fn is not None else med_terms_loss(config.med_terms)
        self.interactions = interactions
        # Ends the run after that epoch as a kill would: for testing --resume.
        self.stop_after_epoch = stop_after_epoch

    def fit(self, resume: bool = False) -> dict:
        """Train, keep the best epoch by validation NDCG@10 (full ranking, ensemble), and return
        the metrics of metrics.json: {"test": ..., "valid": ..., "config": ...}."""
        cfg = self.config
        # The process group, once started, lives as long as the process (the CLI ends it):
        # destroying and starting it again under torchrun's store can hang the rendezvous.
        self.rank, self.world, self.device = distributed.setup(cfg.device)
        handler = self._start_log() if self.rank == 0 else None
        try:
            self._prepare()
            finished = self._train(resume)
            if not finished:
                return {}
            return self._final_metrics()
        finally:
            if handler is not None:
                logging.getLogger("hail_ext").removeHandler(handler)
                handler.close()

    def time_steps(self, num_steps: int, warmup: int = 2) -> dict:
        """Time `num_steps` training steps of the first epoch after `warmup` untimed ones (for
        benchmarks): {"steps", "positions", "sequences", "seconds": [per step]}."""
        cfg = self.config
        self.rank, self.world, self.device = distributed.setup(cfg.device)
        self._prepare()
        torch.manual_seed(_stream_seed(cfg.seed, 1, self.rank))
        inputs, targets = self._epoch_examples(1)
        order = shard_order(self.num_examples, cfg.seed, 1, self.rank, self.world)
        chunks = batches(order, cfg.batch_size)
        self.model.train()
        seconds, positions, sequences = [], 0, 0
        for index in range(warmup + num_steps):
            batch = chunks[index % len(chunks)]
            items = torch.from_numpy(inputs[batch]).to(self.device)
            target = torch.from_numpy(targets[batch]).to(self.device)
            start = time.perf_counter()
            loss, _, rows = self._step(items, target, cfg.alpha)
            float(loss)  # waits for the device
            if index >= warmup:
                seconds.append(time.perf_counter() - start)
                positions += rows
                sequences += len(batch)
        return {
            "steps": num_steps,
            "positions": positions,
            "sequences": sequences,
            "seconds": seconds,
        }

    # -- setup -----------------------------------------------------------------------------

    def _start_log(self) -> logging.Handler:
        self.out.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.out / "train.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        package_logger = logging.getLogger("hail_ext")
        package_logger.addHandler(handler)
        if package_logger.getEffectiveLevel() > logging.INFO:
            package_logger.setLevel(logging.INFO)
        return handler

    def _prepare(self) -> None:
        cfg = self.config
        if self.interactions is None:
            self.interactions = load_data(cfg)
        self.split = data_module.leave_one_out(self.interactions)
        self.model = build_model(cfg, self.interactions.num_items).to(self.device)
        mask = self.model.mask_token
        self.valid_set = build_eval_set(self.split, "valid", cfg.max_len, mask, cfg.seed)
        if self.model.cloze:
            self.windows = cut_windows(self.split.train, cfg.max_len)
            self.num_examples = len(self.windows)
        else:
            self.inputs, self.targets = next_item_examples(self.split.train, cfg.max_len)
            self.num_examples = len(self.inputs)
        self.steps_per_epoch = math.ceil(-(-self.num_examples // self.world) / cfg.batch_size)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.ddp = DistributedDataParallel(self.model) if self.world > 1 else None
        self.optimizer = _adamw(self.model, cfg)
        warmup = int(cfg.warmup * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, self.total_steps, warmup)
        )
        logger.info(
            "%s x%d on %s (%s, world %d): %d training windows, %d steps per epoch, %d parameters",
            cfg.model,
            cfg.peers,
            self.interactions.name,
            self.device,
            self.world,
            self.num_examples,
            self.steps_per_epoch,
            sum(p.numel() for p in self.model.parameters()),
        )

    # -- the loop --------------------------------------------------------------------------

    def _train(self, resume: bool) -> bool:
        cfg = self.config
        state = {
            "epoch": 0,
            "step": 0,
            "best": -1.0,
            "best_epoch": 0,
            "bad_epochs": 0,
            "history": [],
        }
        if resume and (self.out / LAST).is_file():
            state = self._restore(checkpoint.load(self.out / LAST))
        elif resume:
            logger.info("no checkpoint in %s; starting afresh", self.out)

        for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
            if cfg.patience and state["bad_epochs"] >= cfg.patience:
                break
            row = self._train_epoch(epoch, state)
            valid = evaluate(
                self.model,
                self.valid_set,
                batch_size=cfg.eval_batch_size,
                device=self.device,
                keep_history=cfg.keep_history,
                bf16=cfg.bf16,
                rank=self.rank,
                world=self.world,
            )
            for name, values in valid["full"].items():
                row[f"valid_ndcg@10_{name}"] = values["ndcg@10"]
            row["valid_hr@10_ensemble"] = valid["full"]["ensemble"]["hr@10"]
            state["history"].append(row)
            score = valid["full"]["ensemble"]["ndcg@10"]
            improved = score > state["best"]
            if improved:
                state.update(best=score, best_epoch=epoch, bad_epochs=0)
            else:
                state["bad_epochs"] += 1
            state["epoch"] = epoch
            logger.info(
                "epoch %d: loss %.4f, valid NDCG@10 %s (ensemble %.4f%s), %.0f positions/s",
                epoch,
                row["train_loss"],
                " ".join(f"{row[f'valid_ndcg@10_peer{k}']:.4f}" for k in range(cfg.peers)),
                score,
                ", best" if improved else "",
                row["positions_per_s"],
            )
            self._save(state, improved, valid)
            if self.stop_after_epoch == epoch:
                return False
        if cfg.patience and state["bad_epochs"] >= cfg.patience:
            logger.info(
                "stopped early: no better validation NDCG@10 for %d epochs (best: epoch %d)",
                cfg.patience,
                state["best_epoch"],
            )
        self.history_rows = state["history"]
        return True

    def _train_epoch(self, epoch: int, state: dict) -> dict:
        cfg = self.config
        # Dropout draws from a stream of this epoch and process: a resumed epoch repeats exactly.
        torch.manual_seed(_stream_seed(cfg.seed, epoch, self.rank))
        inputs, targets = self._epoch_examples(epoch)
        order = shard_order(self.num_examples, cfg.seed, epoch, self.rank, self.world)
        self.model.train()
        total_loss = total_rows = 0.0
        ce_sum = torch.zeros(cfg.peers, dtype=torch.float64)
        med_sum = torch.zeros(cfg.peers, dtype=torch.float64)
        start = time.perf_counter()
        bar = tqdm(
            batches(order, cfg.batch_size),
            desc=f"epoch {epoch}",
            leave=False,
            disable=not cfg.progress or self.rank != 0,
            unit="batch",
        )
        for batch in bar:
            items = torch.from_numpy(inputs[batch]).to(self.device)
            target = torch.from_numpy(targets[batch]).to(self.device)
            alpha = alpha_at(
                state["step"],
                int(cfg.alpha_warmup * self.total_steps),
                cfg.alpha,
                cfg.alpha_schedule,
            )
            loss, stats, rows = self._step(items, target, alpha)
            state["step"] += 1
            total_loss += float(loss) * rows
            total_rows += rows
            if stats is not None:
                ce_sum += stats.ce.double().cpu() * rows
                med_sum += stats.med.double().cpu() * rows
            rate = total_rows * self.world / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{float(loss):.4f}", pos_s=f"{rate:.0f}")
        seconds = time.perf_counter() - start
        row = {
            "epoch": epoch,
            "step": state["step"],
            "lr": self.scheduler.get_last_lr()[0],
            "alpha": alpha,
            "train_loss": total_loss / max(total_rows, 1.0),
        }
        for k in range(cfg.peers):
            row[f"train_ce_peer{k}"] = float(ce_sum[k]) / max(total_rows, 1.0)
            if cfg.peers > 1:
                row[f"train_med_peer{k}"] = float(med_sum[k]) / max(total_rows, 1.0)
        row["seconds"] = seconds
        row["positions_per_s"] = total_rows * self.world / max(seconds, 1e-9)
        return row

    def _epoch_examples(self, epoch: int) -> tuple:
        if not self.model.cloze:
            return self.inputs, self.targets
        rng = np.random.default_rng([self.config.seed, epoch, 1])
        return cloze_examples(self.windows, self.config.mask_prob, self.model.mask_token, rng)

    def _step(self, items: torch.Tensor, target: torch.Tensor, alpha: float) -> tuple:
        cfg = self.config
        forward = self.ddp if self.ddp is not None else self.model
        with torch.autocast(self.device.type, torch.bfloat16, enabled=cfg.bf16):
            hidden = forward(items)  # [K, B, L, d]
        has_target = target != IGNORE  # [B, L]
        hidden = hidden[:, has_target]  # [K, N, d]
        weight, bias = self.model.output_layer()
        if cfg.bf16:
            hidden, weight = hidden.to(torch.bfloat16), weight.to(torch.bfloat16)
            bias = None if bias is None else bias.to(torch.bfloat16)
        else:
            hidden = hidden.float()
        loss, stats = self.loss_fn(
            hidden,
            weight,
            target[has_target] - 1,
            bias=bias,
            alpha=alpha,
            gamma=cfg.gamma,
            beta=cfg.beta,
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_norm)
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach(), stats, int(has_target.sum())

    # -- checkpoints and results -----------------------------------------------------------

    def _save(self, state: dict, improved: bool, valid: dict) -> None:
        if self.rank == 0:
            common = {"config": self.config.to_dict(), "item_ids": list(self.interactions.item_ids)}
            if improved:
                checkpoint.save(
                    {
                        **common,
                        "model": self.model.state_dict(),
                        "epoch": state["epoch"],
                        "valid": valid,
                    },
                    self.out / BEST,
                )
            checkpoint.save(
                {
                    **common,
                    "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    **state,
                },
                self.out / LAST,
            )
            history.write_csv(state["history"], self.out / "history.csv")
        distributed.barrier(self.world)

    def _restore(self, saved: dict) -> dict:
        ignored = ("progress", "device")
        now = {k: v for k, v in self.config.to_dict().items() if k not in ignored}
        # A setting added after the checkpoint was written had its default then.
        then = {**TrainConfig().to_dict(), **saved["config"]}
        changed = sorted(k for k in now if now[k] != then.get(k))
        if changed:
            raise ValueError(
                f"--resume: the run in {self.out} used other settings for "
                f"{changed}; resume with the same settings or use a new --out"
            )
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        logger.info("resumed %s after epoch %d", self.out, saved["epoch"])
        keys = ("epoch", "step", "best", "best_epoch", "bad_epochs", "history")
        return {key: saved[key] for key in keys}

    def _final_metrics(self) -> dict:
        cfg = self.config
        best = checkpoint.load(self.out / BEST) if self.rank == 0 else None
        holder = [best["model"] if best is not None else None]
        if self.world > 1:
            torch.distributed.broadcast_object_list(holder, src=0)
        self.model.load_state_dict(holder[0])
        test_set = build_eval_set(self.split, "test", cfg.max_len, self.model.mask_token, cfg.seed)
        options = {
            "batch_size": cfg.eval_batch_size,
            "device": self.device,
            "keep_history": cfg.keep_history,
            "bf16": cfg.bf16,
            "rank": self.rank,
            "world": self.world,
        }
        metrics = {
            "test": evaluate(self.model, test_set, **options),
            "valid": evaluate(self.model, self.valid_set, **options),
            "config": cfg.to_dict(),
        }
        if self.rank == 0:
            (self.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
            history.write_csv(self.history_rows, self.out / "history.csv")
            history.plot(self.history_rows, self.out / "learning_curve.png")
            logger.info("best epoch %d; results in %s", best["epoch"], self.out)
        return metrics


def load_data(cfg: TrainConfig):
    """The interactions that `cfg` names, read and filtered as it says."""
    return data_module.load(
        cfg.data,
        cfg.format,
        cfg.k_core,
        user_col=cfg.user_col,
        item_col=cfg.item_col,
        time_col=cfg.time_col,
    )


def build_model(cfg: TrainConfig, num_items: int) -> Peers:
    return Peers(
        cfg.model,
        num_items,
        cfg.peers,
        cfg.dim,
        cfg.max_len,
        cfg.layers,
        cfg.heads,
        cfg.dropout,
        cfg.shared_items,
        cfg.item_bias,
        cfg.seed,
    )


def _adamw(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    # No weight decay on biases and norms: decaying them only shifts what the layers compute.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _stream_seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])
