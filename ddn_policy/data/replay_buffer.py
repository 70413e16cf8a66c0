"""Replay buffers on disk in Diffusion Policy's layout (zarr format 2):

    data/<key>          (N, ...) every episode concatenated on axis 0
    meta/episode_ends   (E,) int64, exclusive end of each episode
    meta/episode_crc32  (E,) int64, CRC-32 of each episode's rows (all keys, sorted)

`meta/episode_ends` is the commit record. An episode is appended by growing every data
array first and the ends last, so a run killed in between leaves only rows past the
last end (ignored by readers, cut off by the next writer) or a torn last end (a fill
value that does not increase; dropped the same way). Nothing is ever half an episode. The checksums (appended with the data, before the
commit) turn a flipped byte in a compressed chunk into an error instead of a silently
wrong demonstration; stores written before they existed are read without them.
"""

from __future__ import annotations

import warnings
import zlib
from pathlib import Path

import numpy as np
import zarr

ENDS = "meta/episode_ends"
CRC = "meta/episode_crc32"
CHUNK_ROWS = 4096


def episode_crc32(episode: dict[str, np.ndarray]) -> int:
    crc = 0
    for key in sorted(episode):
        crc = zlib.crc32(key.encode(), crc)
        crc = zlib.crc32(np.ascontiguousarray(episode[key]).tobytes(), crc)
    return crc


class ReplayBufferError(ValueError):
    """A store that is not a valid replay buffer, or data that would corrupt one."""


def _committed_ends(ends: np.ndarray, path: Path) -> np.ndarray:
    """The increasing prefix of episode_ends; a torn last entry is dropped."""
    ends = np.asarray(ends, dtype=np.int64)
    if ends.size == 0:
        return ends
    bad = np.flatnonzero(np.diff(np.concatenate([[0], ends])) <= 0)
    if bad.size == 0:
        return ends
    if bad[0] == ends.size - 1:
        warnings.warn(f"{path}: ignoring an unfinished last episode record", stacklevel=3)
        return ends[:-1]
    raise ReplayBufferError(
        f"{path}: meta/episode_ends must increase, but entry {bad[0]} is {ends[bad[0]]} "
        f"after {ends[bad[0] - 1] if bad[0] else 0}"
    )


class ReplayBuffer:
    """Read access: `buffer.episode(i)`, `buffer[key]` (all committed rows), sizes."""

    def __init__(self, path: str | Path, required_keys: tuple[str, ...] = (), check_nan=True):
        self.path = Path(path)
        if not self.path.exists():
            raise ReplayBufferError(f"no replay buffer at {self.path}")
        try:
            root = zarr.open_group(str(self.path), mode="r")
            if "meta" not in root or "episode_ends" not in root["meta"]:
                raise ReplayBufferError(f"{self.path} has no {ENDS}; not a replay buffer")
            self._read(root, required_keys)
            if check_nan:  # before the checksums: NaN gets its own, more useful message
                self._check_finite()
            if "episode_crc32" in root["meta"]:
                self._verify(root[CRC][:])
        except ReplayBufferError:
            raise
        except Exception as err:  # zarr, numcodecs and JSON raise many types on damage
            raise ReplayBufferError(
                f"{self.path} is not a readable replay buffer ({type(err).__name__}: {err}); "
                "if it is one, it is damaged: regenerate it (delete it and rerun ddn-demos)"
            ) from err

    def _read(self, root, required_keys) -> None:
        self.episode_ends = _committed_ends(root[ENDS][:], self.path)
        data = root["data"] if "data" in root else {}
        self.keys = sorted(data.keys()) if data else []
        missing = [k for k in required_keys if k not in self.keys]
        if missing:
            raise ReplayBufferError(
                f"{self.path} lacks data/{', data/'.join(missing)}; it has: {self.keys}"
            )
        n = self.num_steps
        self._data = {}
        for key in self.keys:
            arr = data[key]
            if arr.shape[0] < n:
                raise ReplayBufferError(
                    f"{self.path}: data/{key} has {arr.shape[0]} rows but episode_ends says "
                    f"{n} ({self.num_episodes} episodes)"
                )
            self._data[key] = arr[:n]

    def _verify(self, crcs: np.ndarray) -> None:
        # a torn append leaves at most one checksum past the committed episodes
        if not self.num_episodes <= crcs.shape[0] <= self.num_episodes + 1:
            raise ReplayBufferError(
                f"{self.path}: {CRC} has {crcs.shape[0]} entries for {self.num_episodes} "
                "episodes; the store is damaged: regenerate it"
            )
        for i in range(self.num_episodes):
            if episode_crc32(self.episode(i)) != int(crcs[i]):
                raise ReplayBufferError(
                    f"{self.path}: episode {i} fails its CRC-32 check (its rows changed after "
                    "they were written); regenerate the store (delete it and rerun ddn-demos)"
                )

    def _check_finite(self) -> None:
        for key, values in self._data.items():
            if not np.issubdtype(values.dtype, np.floating):
                continue
            bad_rows = np.flatnonzero(~np.isfinite(values.reshape(values.shape[0], -1)).all(1))
            if bad_rows.size:
                episode = int(np.searchsorted(self.episode_ends, bad_rows[0], side="right"))
                raise ReplayBufferError(
                    f"{self.path}: data/{key} holds NaN or inf in episode {episode} "
                    f"(row {bad_rows[0]})"
                )

    @property
    def num_episodes(self) -> int:
        return int(self.episode_ends.size)

    @property
    def num_steps(self) -> int:
        return int(self.episode_ends[-1]) if self.episode_ends.size else 0

    def episode_bounds(self, i: int) -> tuple[int, int]:
        if not 0 <= i < self.num_episodes:
            raise IndexError(f"episode {i} out of range [0, {self.num_episodes})")
        start = int(self.episode_ends[i - 1]) if i > 0 else 0
        return start, int(self.episode_ends[i])

    def episode(self, i: int) -> dict[str, np.ndarray]:
        start, end = self.episode_bounds(i)
        return {k: v[start:end] for k, v in self._data.items()}

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._data:
            raise KeyError(f"{self.path} has no data/{key}; keys: {self.keys}")
        return self._data[key]


class ReplayBufferWriter:
    """Appends whole episodes. mode='create' refuses an existing store; mode='append'
    opens one (cutting off anything past its last committed episode) and checks that
    new episodes have the same keys, dtypes and shapes."""

    def __init__(self, path: str | Path, mode: str = "create"):
        if mode not in ("create", "append"):
            raise ValueError(f"mode must be 'create' or 'append', got mode={mode!r}")
        self.path = Path(path)
        exists = self.path.exists()
        if mode == "create" and exists:
            raise ReplayBufferError(
                f"{self.path} already exists; pass append=true to add episodes to it, "
                "or choose another path"
            )
        if mode == "append" and exists:
            ReplayBuffer(self.path, check_nan=False)  # refuse a store that is not ours
        self.root = zarr.open_group(str(self.path), mode="a", zarr_format=2)
        if ENDS not in self.root:
            for name in (ENDS, CRC):  # a new store carries checksums from the start
                self.root.create_array(name, shape=(0,), chunks=(CHUNK_ROWS,), dtype="i8")
        self.ends = self.root[ENDS]
        self.crcs = self.root[CRC] if CRC in self.root else None
        committed = _committed_ends(self.ends[:], self.path)
        if committed.size != self.ends.shape[0]:
            self.ends.resize((committed.size,))
        if self.crcs is not None and self.crcs.shape[0] > committed.size:
            self.crcs.resize((committed.size,))
        n = int(committed[-1]) if committed.size else 0
        for arr in self._data_arrays().values():
            if arr.shape[0] > n:  # rows of an episode that never committed
                arr.resize((n, *arr.shape[1:]))

    def _data_arrays(self) -> dict:
        if "data" not in self.root:
            return {}
        group = self.root["data"]
        return {k: group[k] for k in group.keys()}

    @property
    def num_episodes(self) -> int:
        return int(self.ends.shape[0])

    @property
    def attrs(self):
        """The store's JSON attributes (provenance: task, seeds, expert settings)."""
        return self.root.attrs

    def add_episode(self, episode: dict[str, np.ndarray]) -> None:
        episode = {k: np.asarray(v) for k, v in episode.items()}
        lengths = {k: v.shape[0] if v.ndim else 0 for k, v in episode.items()}
        if len(set(lengths.values())) != 1 or min(lengths.values()) < 1:
            raise ReplayBufferError(f"episode arrays must share one length >= 1, got {lengths}")
        for key, values in episode.items():
            if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
                raise ReplayBufferError(
                    f"episode {self.num_episodes}: {key} holds NaN or inf; nothing was written"
                )
        arrays = self._data_arrays()
        if arrays and set(arrays) != set(episode):
            raise ReplayBufferError(
                f"{self.path} stores keys {sorted(arrays)}, the new episode has {sorted(episode)}"
            )
        for key, values in episode.items():
            if key in arrays:
                arr = arrays[key]
                if arr.shape[1:] != values.shape[1:] or arr.dtype != values.dtype:
                    raise ReplayBufferError(
                        f"data/{key} is {arr.dtype}{arr.shape[1:]}, the new episode's is "
                        f"{values.dtype}{values.shape[1:]}"
                    )
        length = next(iter(lengths.values()))
        end = (int(self.ends[-1]) if self.num_episodes else 0) + length
        for key, values in episode.items():
            if key not in arrays:
                arrays[key] = self.root.create_array(
                    f"data/{key}",
                    shape=(0, *values.shape[1:]),
                    chunks=(CHUNK_ROWS, *values.shape[1:]),
                    dtype=values.dtype,
                )
            arrays[key].append(values)
        if self.crcs is not None:
            self.crcs.append(np.array([episode_crc32(episode)], dtype=np.int64))
        self.ends.append(np.array([end], dtype=np.int64))  # the commit
