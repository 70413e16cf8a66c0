"""Windows of (observation history, action chunk) for training, Diffusion Policy style.

A window of Tp consecutive steps starting at s gives obs[s : s+To] and
action[s : s+Tp]. Starts range from -(To-1) to n - Tp + (Ta-1), and indices outside the
episode repeat its first or last frame, so the first action of an episode has a full
history and the last actions appear in executed positions.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from ddn_policy.data.normalizer import MinMaxNormalizer
from ddn_policy.data.replay_buffer import ReplayBuffer


def split_episodes(num_episodes: int, val_fraction: float, seed: int) -> tuple[list, list]:
    """Shuffle episode ids and hold out round(val_fraction * E) (at most E-1) for
    validation. Splitting by episode keeps windows of one episode on one side."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got val_fraction={val_fraction}")
    if num_episodes < 1:
        raise ValueError("need at least one episode to train on, got 0")
    order = np.random.default_rng(seed).permutation(num_episodes)
    n_val = min(int(round(val_fraction * num_episodes)), num_episodes - 1)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


class SequenceDataset(Dataset):
    """Items: {"obs": (To, Do), "action": (Tp, Da)} float32 tensors, normalised when a
    normalizer is given."""

    def __init__(
        self,
        buffer: ReplayBuffer,
        episodes: list[int],
        obs_horizon: int,
        pred_horizon: int,
        action_horizon: int,
        normalizer: MinMaxNormalizer | None = None,
        obs_key: str = "obs",
        action_key: str = "action",
    ):
        if not 1 <= obs_horizon <= pred_horizon:
            raise ValueError(f"need 1 <= To <= Tp, got To={obs_horizon}, Tp={pred_horizon}")
        self.obs = np.asarray(buffer[obs_key], dtype=np.float32)
        self.action = np.asarray(buffer[action_key], dtype=np.float32)
        self.to, self.tp = obs_horizon, pred_horizon
        self.normalizer = normalizer
        windows = []  # (row of episode start, episode length, window start)
        window_episodes = []
        for e in episodes:
            start, end = buffer.episode_bounds(e)
            n = end - start
            last = max(n - pred_horizon + action_horizon - 1, -(obs_horizon - 1))
            for s in range(-(obs_horizon - 1), last + 1):
                windows.append((start, n, s))
                window_episodes.append(e)
        self.windows = np.asarray(windows, dtype=np.int64).reshape(-1, 3)
        self.window_episodes = np.asarray(window_episodes, dtype=np.int64)  # (N,) buffer ids

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        start, n, s = self.windows[i]
        rows = start + np.clip(np.arange(s, s + self.tp), 0, n - 1)  # edge frames repeat
        obs = torch.from_numpy(self.obs[rows[: self.to]])
        action = torch.from_numpy(self.action[rows])
        if self.normalizer is not None:
            obs = self.normalizer.normalize("obs", obs)
            action = self.normalizer.normalize("action", action)
        return {"obs": obs, "action": action}

    def stacked(self) -> dict[str, torch.Tensor]:
        """Every window at once: obs (N, To, Do), action (N, Tp, Da), and episode (N,),
        the buffer episode each window comes from."""
        items = [self[i] for i in range(len(self))]
        return {
            "obs": torch.stack([x["obs"] for x in items]),
            "action": torch.stack([x["action"] for x in items]),
            "episode": torch.from_numpy(self.window_episodes),
        }
