"""Replay buffers on disk, windowed datasets and the normalizer."""

from ddn_policy.data.dataset import SequenceDataset, split_episodes
from ddn_policy.data.normalizer import MinMaxNormalizer
from ddn_policy.data.replay_buffer import ReplayBuffer, ReplayBufferError, ReplayBufferWriter

__all__ = [
    "MinMaxNormalizer",
    "ReplayBuffer",
    "ReplayBufferError",
    "ReplayBufferWriter",
    "SequenceDataset",
    "split_episodes",
]
