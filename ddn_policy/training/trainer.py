"""One Trainer for every method: AdamW, cosine schedule with warm-up, EMA (splits
mirrored into it), gradient clipping, balance step, JSON-lines log, periodic
evaluation and atomic checkpoints. A policy needs `compute_loss(batch) -> (loss, info)`,
`save_pretrained(dir)` and a `model` attribute holding its network."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ddn_policy.core import make_balancer
from ddn_policy.core.balance import ddn_layers
from ddn_policy.training.checkpoint import (
    latest_complete,
    load_optimizer_tensors,
    load_tensors,
    optimizer_tensors,
    save_tensors,
    write_checkpoint,
)
from ddn_policy.training.ema import EMA


@dataclass
class TrainConfig:
    steps: int = 3000  # optimizer steps
    batch_size: int = 256  # windows per step
    lr: float = 1e-3  # peak AdamW learning rate
    betas: tuple[float, float] = (0.95, 0.999)  # AdamW betas (Diffusion Policy's)
    weight_decay: float = 1e-6  # AdamW weight decay
    warmup_steps: int = 100  # linear warm-up, then cosine decay to 0
    grad_clip: float = 1.0  # max gradient norm (0 disables)
    ema_power: float = 0.75  # EMA decay 1 - (1 + step)^-power ...
    ema_max_decay: float = 0.9999  # ... capped here
    balance: str = "split_prune"  # "split_prune", "loss_free" or "none"
    balance_min_count: int = 0  # SplitAndPrune warm-up (samples seen per layer)
    loss_free_rate: float = 0.01  # LossFreeBalance bias step
    log_every: int = 50  # steps between log lines
    checkpoint_every: int = 0  # steps between checkpoints (0: only the final one)
    eval_every: int = 0  # steps between evaluations (0: none during training)
    seed: int = 0  # seeds weights, data order and dropout
    device: str = "cpu"  # torch device

    def __post_init__(self):
        self.betas = tuple(self.betas)
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {name}={getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got lr={self.lr}")


def cosine_with_warmup(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


class Trainer:
    def __init__(self, policy, dataset: Dataset, cfg: TrainConfig, out_dir: str | Path):
        self.policy, self.dataset, self.cfg = policy, dataset, cfg
        self.out_dir = Path(out_dir)
        self.device = torch.device(cfg.device)
        policy.to(self.device).train()
        self.optimizer = torch.optim.AdamW(
            policy.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
        )
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, cosine_with_warmup(cfg.warmup_steps, cfg.steps)
        )
        self.ema = EMA(policy.model, cfg.ema_power, cfg.ema_max_decay)
        # balancing acts on DDLs; the baselines have none and train without it
        has_ddls = bool(ddn_layers(policy.model))
        self.balancer = make_balancer(
            cfg.balance if has_ddls else "none",
            policy.model,
            self.optimizer,
            [self.ema.module],
            cfg.balance_min_count,
            cfg.loss_free_rate,
        )
        self.step = 0

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> Path:
        def contents(tmp: Path) -> None:
            live = {k: v.clone() for k, v in self.policy.model.state_dict().items()}
            self.ema.copy_buffers_from(self.policy.model)
            self.policy.model.load_state_dict(self.ema.module.state_dict())
            self.policy.save_pretrained(tmp / "pretrained_model")
            self.policy.model.load_state_dict(live)
            state = tmp / "training_state"
            state.mkdir()
            save_tensors(state / "model.safetensors", live)
            save_tensors(state / "ema.safetensors", self.ema.averaged.state_dict())
            opt, meta = optimizer_tensors(self.optimizer)
            save_tensors(state / "optimizer.safetensors", opt)
            meta.update(step=self.step, schedule=self.schedule.state_dict())
            (state / "trainer_state.json").write_text(json.dumps(meta, indent=2))

        return write_checkpoint(self.out_dir / "checkpoints", self.step, contents)

    def resume(self) -> bool:
        """Load the newest complete checkpoint under out_dir, if any."""
        ckpt = latest_complete(self.out_dir / "checkpoints")
        if ckpt is None:
            return False
        state = ckpt / "training_state"
        self.policy.model.load_state_dict(load_tensors(state / "model.safetensors"))
        self.ema.averaged.load_state_dict(load_tensors(state / "ema.safetensors"))
        meta = json.loads((state / "trainer_state.json").read_text())
        load_optimizer_tensors(self.optimizer, load_tensors(state / "optimizer.safetensors"), meta)
        self.schedule.load_state_dict(meta["schedule"])
        self.step = int(meta["step"])
        return True

    # ------------------------------------------------------------------ loop
    def batches(self):
        gen = torch.Generator().manual_seed(self.cfg.seed + self.step)
        while True:
            loader = DataLoader(
                self.dataset,
                batch_size=self.cfg.batch_size,
                shuffle=True,
                drop_last=True,
                generator=gen,
            )
            if len(loader) == 0:
                raise ValueError(
                    f"batch_size={self.cfg.batch_size} exceeds the {len(self.dataset)} training "
                    "windows; lower batch_size or add demonstrations"
                )
            yield from loader

    def _every(self, period: int) -> bool:
        return period > 0 and self.step % period == 0

    def fit(self, evaluate: Callable[[object, int], dict] | None = None) -> dict:
        """Train to cfg.steps. `evaluate(ema_policy_dir, step)` runs every eval_every
        steps and at the end on the saved EMA policy; its dict is logged."""
        cfg = self.cfg
        self.out_dir.mkdir(parents=True, exist_ok=True)
        log = (self.out_dir / "log.jsonl").open("a")
        data = self.batches()
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train")
        start, last = time.perf_counter(), {}
        while self.step < cfg.steps:
            batch = {k: v.to(self.device) for k, v in next(data).items()}
            loss, info = self.policy.compute_loss(batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = (
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.grad_clip)
                if cfg.grad_clip > 0
                else torch.tensor(0.0)
            )
            self.optimizer.step()
            self.schedule.step()
            splits = self.balancer.step() if self.balancer is not None else None
            self.ema.update(self.policy.model)
            self.step += 1
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                last = {
                    "step": self.step,
                    "loss": loss.item(),
                    "lr": self.schedule.get_last_lr()[0],
                    "grad_norm": float(grad_norm),
                    "splits": len(splits) if isinstance(splits, list) else None,
                    "seconds": time.perf_counter() - start,
                    **{k: v.tolist() for k, v in info.items()},
                }
                log.write(json.dumps(last) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{last['loss']:.4f}")
            final = self.step == cfg.steps
            if final or (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0):
                ckpt = self.save()
                if evaluate is not None and (
                    final or (cfg.eval_every and self.step % cfg.eval_every == 0)
                ):
                    result = evaluate(ckpt / "pretrained_model", self.step)
                    log.write(json.dumps({"step": self.step, "eval": result}) + "\n")
                    log.flush()
        bar.close()
        log.close()
        last["train_seconds"] = time.perf_counter() - start
        return last
