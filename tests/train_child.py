"""A training process for the kill test: `python tests/train_child.py DEMOS OUT STEPS
[KILL_AT]`. With KILL_AT=k it SIGKILLs itself at the k-th file or directory rename
(os.replace) of the second checkpoint it writes, i.e. in the middle of that write; the
first checkpoint it writes completes, so every run makes progress. It prints the state
digest of the finished model."""

from __future__ import annotations

import os
import signal
import sys

import torch

from ddn_policy.data import MinMaxNormalizer, ReplayBuffer, SequenceDataset
from ddn_policy.policies.factory import make_policy
from ddn_policy.training import trainer as trainer_module
from ddn_policy.training.distributed import state_digest
from tasks import get_task

CHECKPOINT_EVERY = 5


def kill_inside_second_save(kill_at: int) -> None:
    real_save, real_replace = trainer_module.Trainer.save, os.replace
    saves = calls = 0

    def replace(src, dst):
        nonlocal calls
        calls += 1
        if calls == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst)

    def save(self):
        nonlocal saves
        saves += 1
        if saves == 2:
            os.replace = replace
        try:
            return real_save(self)
        finally:
            os.replace = real_replace

    trainer_module.Trainer.save = save


def main() -> None:
    demos, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if len(sys.argv) > 4:
        kill_inside_second_save(int(sys.argv[4]))
    torch.set_num_threads(1)
    torch.manual_seed(0)
    spec = get_task("obstacle-reach")
    buffer = ReplayBuffer(demos)
    normalizer = MinMaxNormalizer.fit({"obs": buffer["obs"], "action": buffer["action"]})
    policy = make_policy({"name": "ddn", "preset": "tiny"}, spec, normalizer)
    dataset = SequenceDataset(buffer, list(range(buffer.num_episodes)), 2, 16, 8)
    cfg = trainer_module.TrainConfig(
        steps=steps, batch_size=32, checkpoint_every=CHECKPOINT_EVERY, log_every=5
    )
    trainer = trainer_module.Trainer(policy, dataset, cfg, out)
    trainer.resume()
    trainer.fit()
    print(state_digest(policy.model), state_digest(trainer.ema.averaged), flush=True)


if __name__ == "__main__":
    main()
