"""The entity state snapshot: what each key's history holds as of the end of the data.

For every history key (horse, jockey, jockey x trainer ...): its last few rows (as many
as the longest rolling window) with the values rolled over, and its career counts.
Stored as one .npz of plain arrays plus a JSON header, so that a Lambda loads it with
numpy alone (no pickle, no pandas).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from gallop.features.plan import HistoryKey

FORMAT = 1
_CAREER = ("runs", "wins", "places", "last_time")


SNAPSHOT = "state.npz"  # its file name under a feature set's prefix


def cached_snapshots(read: Callable[[str], bytes]) -> Callable[[str], State]:
    """Snapshots by key, each read once per container: a key names its dataset version
    and spec, so its content never changes."""

    @lru_cache(maxsize=8)
    def load(key: str) -> State:
        return State.from_bytes(read(key))

    return load


@dataclass
class KeyState:
    tail_keys: np.ndarray
    tail_times: np.ndarray  # int64 microseconds since the epoch, UTC
    tail_values: dict[str, np.ndarray]
    career_keys: np.ndarray
    career_runs: np.ndarray
    career_wins: np.ndarray
    career_places: np.ndarray
    career_last_time: np.ndarray

    @classmethod
    def empty(cls, key: HistoryKey) -> KeyState:
        none = np.zeros(0)
        return cls(
            tail_keys=np.zeros(0, dtype=str),
            tail_times=np.zeros(0, dtype=np.int64),
            tail_values={column: none for column in key.rolled},
            career_keys=np.zeros(0, dtype=str),
            career_runs=none,
            career_wins=none,
            career_places=none,
            career_last_time=np.zeros(0, dtype=np.int64),
        )

    @property
    def entities(self) -> int:
        return len(self.career_keys)


@dataclass
class State:
    keys: dict[str, KeyState]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        arrays: dict[str, np.ndarray] = {}
        header = {"format": FORMAT, "meta": self.meta, "keys": {}}
        for k, (name, key) in enumerate(self.keys.items()):
            header["keys"][name] = {"index": k, "rolled": list(key.tail_values)}
            arrays[f"k{k}_tail_keys"] = key.tail_keys.astype(str)
            arrays[f"k{k}_tail_times"] = key.tail_times.astype(np.int64)
            for c, column in enumerate(key.tail_values):
                arrays[f"k{k}_tail_v{c}"] = key.tail_values[column].astype(np.float64)
            arrays[f"k{k}_career_keys"] = key.career_keys.astype(str)
            for part in _CAREER:
                arrays[f"k{k}_career_{part}"] = getattr(key, f"career_{part}")
        arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
        sink = io.BytesIO()
        np.savez_compressed(sink, **arrays)
        return sink.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> State:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            header = json.loads(arrays["header"].tobytes())
            if header.get("format") != FORMAT:
                raise ValueError(f"entity state format {header.get('format')} is not {FORMAT}")
            keys = {}
            for name, info in header["keys"].items():
                k = info["index"]
                keys[name] = KeyState(
                    tail_keys=arrays[f"k{k}_tail_keys"],
                    tail_times=arrays[f"k{k}_tail_times"],
                    tail_values={
                        column: arrays[f"k{k}_tail_v{c}"] for c, column in enumerate(info["rolled"])
                    },
                    career_keys=arrays[f"k{k}_career_keys"],
                    **{f"career_{part}": arrays[f"k{k}_career_{part}"] for part in _CAREER},
                )
        return cls(keys=keys, meta=header["meta"])
