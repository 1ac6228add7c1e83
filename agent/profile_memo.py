"""Profiles this agent measured, kept to answer the same request again without the model.

A household fine-tunes the same model again and again; its blocks take the same time on
the same device. A request may accept a profile up to ``max_age_s`` old (the coordinator's
``--profile-max-age``): the same request (model directory, blocks, shapes, what to time)
on the same model files (names, sizes and modification times unchanged), measured under the
same conditions (device, torch threads, torch version, the clock and CPU quota it was
timed by: ``ProfileAsk.conditions``, agent/profile_clock.py), is
answered from the memo, and the reply says how old it is. A changed file, another request,
or an older profile is measured again.

With a ``path`` (the agent's ``profiles.json`` in its cache directory) the memo outlives the
process: an agent that systemd restarted does not load and time a model again that it
timed a moment before (for a 7B model, loading alone is many seconds). Ages are wall-clock
seconds; a memo that cannot be read starts empty, one that cannot be written stays in
memory.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.profiling import LayerTiming, ProfileResult
from pac.durable import write_json

log = logging.getLogger("pac.agent")

# The distinct requests kept (a job asks one per agent; a few models in turn fit).
MEMO_SIZE = 16
# The memo's file in an agent's cache directory.
PROFILES_FILE = "profiles.json"


@dataclass(frozen=True)
class ProfileAsk:
    """What a Profile request asks to time (see agent/profiling.profile_layers)."""

    model_dir: Path
    start: int
    end: int
    batch_size: int
    seq_len: int
    repeats: int
    side_network: bool = False
    second_batch_size: int = 0
    backward_technique: str = ""
    packed_backbone: bool = False
    # Agents of this one's CPU pool measuring at the same time (ProfileRequest.pool_agents)
    pool_agents: int = 0
    # Where it is measured (the agent's device, torch threads and version): a profile kept
    # from another setting is not an answer.
    conditions: str = ""


Stamp = tuple[tuple[str, int, int], ...]


def model_files_stamp(model_dir: Path) -> Stamp:
    """Name, size and modification time of every file directly in ``model_dir`` (weights,
    config, tokenizer): any change measures the model again."""
    stamp = []
    with os.scandir(model_dir) as entries:
        for entry in entries:
            if entry.is_file():  # follows symbolic links: a re-pointed link is a change
                info = entry.stat()
                stamp.append((entry.name, info.st_size, info.st_mtime_ns))
    return tuple(sorted(stamp))


class ProfileMemo:
    """Measured profiles by request and model files, with the time each was measured; kept
    in ``path`` too when given (see the module docstring)."""

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        size: int = MEMO_SIZE,
        path: Path | None = None,
    ):
        self._clock = clock
        self._size = size
        self._path = path
        self._lock = threading.Lock()
        self._kept: dict[tuple[ProfileAsk, Stamp], tuple[float, ProfileResult]] = {}
        if path is not None:
            self._kept.update(_read(path))

    def profile(
        self, ask: ProfileAsk, max_age_s: float, measure: Callable[[ProfileAsk], ProfileResult]
    ) -> tuple[ProfileResult, float]:
        """The profile ``ask`` asks for and its age in seconds: a kept one at most
        ``max_age_s`` old for the same model files, else ``measure(ask)`` (age 0), kept."""
        try:
            key = (ask, model_files_stamp(ask.model_dir))
        except OSError:  # no such directory: measuring says so as the request expects
            return measure(ask), 0.0
        with self._lock:
            kept = self._kept.get(key)
        if kept is not None and max_age_s > 0:
            age = self._clock() - kept[0]
            if 0 <= age <= max_age_s:
                return kept[1], age
        result = measure(ask)
        with self._lock:
            self._kept.pop(key, None)
            self._kept[key] = (self._clock(), result)
            while len(self._kept) > self._size:  # the oldest measured goes first
                del self._kept[next(iter(self._kept))]
            entries = [_entry(k, when, r) for k, (when, r) in self._kept.items()]
        if self._path is not None:
            try:
                write_json(self._path, entries)
            except OSError as error:
                log.warning("profile memo %s not written (%s): kept in memory", self._path, error)
        return result, 0.0


def _entry(key: tuple[ProfileAsk, Stamp], measured_at: float, result: ProfileResult) -> Any:
    ask, stamp = key
    return {
        "ask": {**asdict(ask), "model_dir": str(ask.model_dir)},
        "stamp": [list(item) for item in stamp],
        "measured_at": measured_at,
        "result": {
            **asdict(result),
            "second_batch_seconds": list(result.second_batch_seconds),
            "backward_seconds": list(result.backward_seconds),
        },
    }


def _read(path: Path) -> dict[tuple[ProfileAsk, Stamp], tuple[float, ProfileResult]]:
    """The entries kept in ``path``, oldest first; an unreadable file or entry is left out."""
    try:
        entries = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        log.warning("profile memo %s not read (%s): starting empty", path, error)
        return {}
    kept = {}
    for entry in entries if isinstance(entries, list) else []:
        try:
            ask = ProfileAsk(**{**entry["ask"], "model_dir": Path(entry["ask"]["model_dir"])})
            stamp: Stamp = tuple((str(n), int(s), int(m)) for n, s, m in entry["stamp"])
            raw = entry["result"]
            result = ProfileResult(
                float(raw["embed_seconds"]),
                [LayerTiming(**layer) for layer in raw["layers"]],
                float(raw["side_seconds"]),
                tuple(float(t) for t in raw["second_batch_seconds"]),
                tuple(float(t) for t in raw["backward_seconds"]),
                float(raw.get("side_second_batch_seconds", 0.0)),
            )
            kept[(ask, stamp)] = (float(entry["measured_at"]), result)
        except (KeyError, TypeError, ValueError):
            continue
    return kept
