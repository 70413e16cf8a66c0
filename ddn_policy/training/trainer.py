"""One Trainer for every method: AdamW, cosine schedule with warm-up, EMA (splits
mirrored into it), gradient clipping, balance step, JSON-lines log, periodic
evaluation and atomic checkpoints that resume bit for bit; data-parallel under
torchrun. A policy needs `compute_loss(batch) -> (loss, info)`, `save_pretrained(dir)`
and a `model` attribute holding its network.

Exact resume: a checkpoint holds everything a step reads (weights, EMA, optimizer,
schedule, balance statistics as model buffers, each rank's RNG state, the data
order's generator state at the start of the epoch and the position in it), so N steps
equal N/2 steps, a kill, a resume and N/2 steps, bit for bit on the same machine.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ddn_policy.core import make_balancer
from ddn_policy.core.balance import StepStatistics, ddn_layers
from ddn_policy.training.checkpoint import (
    TRAINING_STATE,
    latest_complete,
    load_optimizer_tensors,
    optimizer_tensors,
    read_training_state,
    remove_stale,
    save_tensors,
    write_checkpoint,
)
from ddn_policy.training.distributed import (
    LossModule,
    RankBatches,
    World,
    all_reduce_sum_,
    any_rank,
    gather_bytes,
    rank_digests,
)
from ddn_policy.training.ema import EMA
from ddn_policy.utils.io import atomic_write_text


class NonFiniteTrainingError(RuntimeError):
    """Too many steps in a row had a non-finite loss or gradient."""


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
    # SplitAndPrune statistics halve every this many steps, so a node that stopped winning
    # is pruned (0: counts since creation, the reference's rule)
    balance_half_life: float = 0
    # A split moves the clone and its source apart by +- this fraction of the source's
    # weight RMS, so the twins do not tie (0: exact clones, the reference's rule)
    balance_split_perturb: float = 0
    # Fraction of the steps during which the balancer acts. Under a condition splits never
    # stop firing, and the selection prior needs steps after the last one to learn the
    # final nodes' frequencies (1.0: balance to the end, as the reference).
    balance_until: float = 1.0
    loss_free_rate: float = 0.01  # LossFreeBalance bias step
    log_every: int = 50  # steps between log lines
    checkpoint_every: int = 0  # steps between checkpoints (0: only the final one)
    eval_every: int = 0  # steps between evaluations (0: none during training)
    max_nonfinite_steps: int = 5  # stop after this many skipped (non-finite) steps in a row
    seed: int = 0  # seeds weights, data order, dropout and split offsets
    device: str = "cpu"  # torch device

    def __post_init__(self):
        self.betas = tuple(self.betas)
        for name in ("steps", "batch_size", "log_every", "max_nonfinite_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {name}={getattr(self, name)}")
        for name in (
            "warmup_steps",
            "checkpoint_every",
            "eval_every",
            "balance_min_count",
            "balance_half_life",
            "balance_split_perturb",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {name}={getattr(self, name)}")
        for name in ("lr", "loss_free_rate"):
            if not getattr(self, name) > 0:  # also refuses nan
                raise ValueError(f"{name} must be > 0, got {name}={getattr(self, name)}")
        if not 0.0 < self.balance_until <= 1.0:
            raise ValueError(
                f"balance_until is a fraction of the steps in (0, 1], "
                f"got balance_until={self.balance_until}"
            )
        if not self.grad_clip >= 0:
            raise ValueError(f"grad_clip must be >= 0 (0 disables), got grad_clip={self.grad_clip}")


def cosine_with_warmup(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


class Trainer:
    def __init__(
        self,
        policy,
        dataset: Dataset,
        cfg: TrainConfig,
        out_dir: str | Path,
        world: World | None = None,
    ):
        self.policy, self.dataset, self.cfg = policy, dataset, cfg
        self.world = world = world or World()
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
            min_count=cfg.balance_min_count,
            rate=cfg.loss_free_rate,
            half_life=cfg.balance_half_life,
            perturb=cfg.balance_split_perturb,
            seed=cfg.seed,
        )
        self.statistics = StepStatistics(policy.model)
        self.loss_forward = policy.compute_loss
        if world.distributed:
            # Buffers are balance statistics: summed over ranks below, never broadcast.
            # Some parameters take no part in the loss (the last DDL's leak output feeds
            # nothing), hence find_unused_parameters.
            ids = [self.device.index] if self.device.type == "cuda" else None
            with warnings.catch_warnings():  # its replacement still syncs buffers at init
                warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated")
                self.loss_forward = DistributedDataParallel(
                    LossModule(policy),
                    device_ids=ids,
                    broadcast_buffers=False,
                    find_unused_parameters=True,
                )
            torch.manual_seed(cfg.seed + 1_000_003 * world.rank)  # own dropout and noise
        self.data_generator = torch.Generator().manual_seed(cfg.seed)
        self.epoch_start_state = self.data_generator.get_state()
        self.batches_into_epoch = 0
        self._resume_data: tuple[torch.Tensor, int] | None = None
        self.step = 0
        self.nonfinite_in_a_row = 0

    # ------------------------------------------------------------------ checkpoints
    def _rng_state(self) -> torch.Tensor:
        parts = [torch.get_rng_state()]
        if self.device.type == "cuda":
            parts.append(torch.cuda.get_rng_state(self.device))
        return torch.cat(parts)

    def _set_rng_state(self, state: torch.Tensor) -> None:
        cpu = torch.get_rng_state().numel()
        torch.set_rng_state(state[:cpu].clone())
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(state[cpu:].clone(), self.device)

    @property
    def _split_stream(self) -> torch.Generator | None:
        """The balancer's own random stream (perturbed splits), saved with the RNGs."""
        return getattr(self.balancer, "perturb_generator", None)

    def save(self) -> Path | None:
        """Every rank takes part (their RNG states are gathered); rank 0 writes."""
        rng = gather_bytes(self._rng_state().to(self._collective_device), self.world)
        if not self.world.is_main:
            return None

        def contents(tmp: Path) -> None:
            live = {k: v.clone() for k, v in self.policy.model.state_dict().items()}
            self.ema.copy_buffers_from(self.policy.model)
            self.policy.model.load_state_dict(self.ema.module.state_dict())
            self.policy.save_pretrained(tmp / "pretrained_model")
            self.policy.model.load_state_dict(live)
            state = tmp / TRAINING_STATE
            state.mkdir()
            save_tensors(state / "model.safetensors", live)
            save_tensors(state / "ema.safetensors", self.ema.averaged.state_dict())
            opt, meta = optimizer_tensors(self.optimizer)
            save_tensors(state / "optimizer.safetensors", opt)
            streams = {"data_epoch_start": self.epoch_start_state}
            if self._split_stream is not None:
                streams["split_perturb"] = self._split_stream.get_state()
            save_tensors(
                state / "rng.safetensors",
                {f"rank{r}": t.cpu() for r, t in enumerate(rng)} | streams,
            )
            meta.update(
                step=self.step,
                schedule=self.schedule.state_dict(),
                world_size=self.world.size,
                batches_into_epoch=self.batches_into_epoch,
                nonfinite_in_a_row=self.nonfinite_in_a_row,
            )
            atomic_write_text(state / "trainer_state.json", json.dumps(meta, indent=2))

        return write_checkpoint(self.out_dir / "checkpoints", self.step, contents)

    def resume(self) -> bool:
        """Load the newest complete checkpoint under out_dir that holds a training
        state, if any (its files checked against their manifest first)."""
        root = self.out_dir / "checkpoints"
        if self.world.is_main:
            remove_stale(root)
        ckpt = latest_complete(root, resumable=True)
        if ckpt is None:
            return False
        tensors, meta = read_training_state(ckpt)
        try:
            self.policy.model.load_state_dict(tensors["model"])
            self.ema.averaged.load_state_dict(tensors["ema"])
        except RuntimeError as err:
            raise ValueError(
                f"{ckpt} holds another model ({str(err).splitlines()[0]}); "
                "use a new out_dir for a different configuration"
            ) from err
        load_optimizer_tensors(self.optimizer, tensors["optimizer"], meta)
        self.schedule.load_state_dict(meta["schedule"])
        self.step = int(meta["step"])
        self.nonfinite_in_a_row = int(meta.get("nonfinite_in_a_row", 0))
        rng = tensors.get("rng")
        if rng is not None and "split_perturb" in rng and self._split_stream is not None:
            self._split_stream.set_state(rng["split_perturb"])  # the same on every rank
        if rng is None:  # written before exact resume existed: continue as it did then
            self.data_generator.manual_seed(self.cfg.seed + self.step)
            print(f"{ckpt} predates exact resume: random streams continue, not bit-exact")
        elif int(meta["world_size"]) == self.world.size:
            self._set_rng_state(rng[f"rank{self.world.rank}"])
            self._resume_data = (rng["data_epoch_start"], int(meta["batches_into_epoch"]))
        else:  # a different number of processes cannot replay the same streams
            torch.manual_seed(self.cfg.seed + 1_000_003 * self.world.rank + self.step)
            self._resume_data = (rng["data_epoch_start"], int(meta["batches_into_epoch"]))
            print(
                f"resuming {meta['world_size']} process(es) as {self.world.size}: data order "
                "and weights continue, random streams are reseeded (not bit-exact)",
                flush=True,
            )
        if self.world.is_main:
            self._truncate_log()
        return True

    def _truncate_log(self) -> None:
        """Drop log lines of steps after the checkpoint: they will be run again."""
        log = self.out_dir / "log.jsonl"
        if log.is_file():
            lines = log.read_text().splitlines()
            kept = [line for line in lines if json.loads(line).get("step", 0) <= self.step]
            atomic_write_text(log, "".join(line + "\n" for line in kept))

    @property
    def _collective_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    # ------------------------------------------------------------------ loop
    def batches(self):
        """One shuffled pass after another from one generator; every rank draws the same
        order and keeps its slice. Resuming replays the epoch's draws and skips the
        batches already used."""
        skip = 0
        while True:
            if self._resume_data is not None:
                state, skip = self._resume_data
                self.data_generator.set_state(state)
                self._resume_data = None
            self.epoch_start_state = self.data_generator.get_state()
            sampler = RankBatches(
                len(self.dataset), self.cfg.batch_size, self.world, self.data_generator
            )
            sampler.skip, self.batches_into_epoch, skip = skip, skip, 0
            for batch in DataLoader(
                self.dataset, batch_sampler=sampler, generator=self.data_generator
            ):
                self.batches_into_epoch += 1
                yield batch

    def _every(self, period: int) -> bool:
        return period > 0 and self.step % period == 0

    def _train_step(self, batch: dict) -> tuple[torch.Tensor, dict, torch.Tensor, list | None]:
        """One update, or none when the loss or gradient is not finite on any rank: the
        weights, optimizer, EMA and balance statistics are then left as they were."""
        self.statistics.begin()
        loss, info = self.loss_forward(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), clip)
        finite = bool(torch.isfinite(loss)) and bool(torch.isfinite(grad_norm))
        if any_rank(not finite, self.world, self._collective_device):
            self.optimizer.zero_grad(set_to_none=True)
            self.statistics.undo()
            self.schedule.step()
            return loss, info, grad_norm, None
        if self.world.distributed:
            self.statistics.sum_over(lambda t: all_reduce_sum_(t, self.world))
        self.optimizer.step()
        self.schedule.step()
        balancing = self.step < self.cfg.balance_until * self.cfg.steps  # 0-based step
        splits = self.balancer.step() if self.balancer is not None and balancing else None
        self.ema.update(self.policy.model)
        return loss, info, grad_norm, splits if isinstance(splits, list) else []

    def fit(self, evaluate: Callable[[object, int], dict] | None = None) -> dict:
        """Train to cfg.steps. `evaluate(ema_policy_dir, step)` runs every eval_every
        steps and at the end on the saved EMA policy (rank 0); its dict is logged."""
        cfg, main = self.cfg, self.world.is_main
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        log = (self.out_dir / "log.jsonl").open("a") if main else None
        data = self.batches()
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train", disable=not main)
        start, last, start_step = time.perf_counter(), {}, self.step
        while self.step < cfg.steps:
            batch = {k: v.to(self.device) for k, v in next(data).items()}
            loss, info, grad_norm, splits = self._train_step(batch)
            self.step += 1
            bar.update(1)
            if splits is None:
                self.nonfinite_in_a_row += 1
                self._log(
                    log,
                    {
                        "step": self.step,
                        "skipped": "non-finite loss or gradient",
                        "loss": loss.item(),
                        "grad_norm": float(grad_norm),
                    },
                )
                if self.nonfinite_in_a_row >= cfg.max_nonfinite_steps:
                    self._stop_nonfinite(log)
            else:
                self.nonfinite_in_a_row = 0
            if main and (self.step % cfg.log_every == 0 or self.step == cfg.steps):
                last = {
                    "step": self.step,
                    "loss": loss.item(),
                    "lr": self.schedule.get_last_lr()[0],
                    "grad_norm": float(grad_norm),
                    "splits": None if self.balancer is None else len(splits or []),
                    "total_splits": getattr(self.balancer, "total_splits", None),
                    "seconds": time.perf_counter() - start,
                    **{k: v.tolist() for k, v in info.items()},
                }
                self._log(log, last)
                bar.set_postfix(loss=f"{last['loss']:.4f}")
            final = self.step == cfg.steps
            if final or self._every(cfg.checkpoint_every):
                ckpt = self.save()
                if (
                    ckpt is not None
                    and evaluate is not None
                    and (final or self._every(cfg.eval_every))
                ):
                    self._log(
                        log,
                        {"step": self.step, "eval": evaluate(ckpt / "pretrained_model", self.step)},
                    )
        bar.close()
        seconds = time.perf_counter() - start
        last["train_seconds"] = seconds
        steps_run = self.step - start_step
        last["samples_per_second"] = (
            steps_run * cfg.batch_size * self.world.size / max(seconds, 1e-9)
        )
        last["world_size"] = self.world.size
        if self.world.distributed:
            digests = rank_digests(self.policy.model, self.world, self._collective_device)
            last["ranks_identical"] = len(set(digests)) == 1
            self._log(log, {"step": self.step, "rank_state_sha256": digests})
            if not last["ranks_identical"]:
                raise RuntimeError(f"data-parallel ranks diverged: state digests {digests}")
        if log is not None:
            log.close()
        return last

    def _log(self, log, record: dict) -> None:
        if log is not None:
            log.write(json.dumps(record) + "\n")
            log.flush()

    def _stop_nonfinite(self, log) -> None:
        good = latest_complete(self.out_dir / "checkpoints", resumable=True)
        message = (
            f"{self.nonfinite_in_a_row} steps in a row up to step {self.step} had a non-finite "
            "loss or gradient and were skipped (the weights, EMA and balance statistics are "
            f"untouched); the last good checkpoint is {good or '(none yet)'}. Check the data "
            "for nan/inf, lower train.lr, or raise train.max_nonfinite_steps"
        )
        self._log(log, {"step": self.step, "stopped": message})
        if log is not None:
            log.close()
        raise NonFiniteTrainingError(message)
