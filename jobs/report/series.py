"""Time series a shard records while it runs: its own progress and its engine's figures, sampled every poll.

A `SeriesRecorder` keeps at most `MAX_SAMPLES` samples: when full it drops every other one and samples half as
often, so a shard of any length leaves a bounded file. Counters are cumulative, so dropping samples loses resolution,
never tokens. At the end of the shard the samples are written as `series-NNNNN.json` beside its parts.
"""
from __future__ import annotations

import json
from collections.abc import Callable

from pydantic import BaseModel

from tide.jobs.state import EngineLoad, ShardProgress
from tide.jobs.storage import Location

MAX_SAMPLES = 240
SERIES_PREFIX = "series-"


class Sample(EngineLoad):
    """One moment of a shard (unix seconds) and of the engine it feeds (that engine's running totals)."""

    t: float
    completed: int
    prompt_tokens: int
    completion_tokens: int


class ShardSeries(BaseModel):
    shard: int
    worker: str
    samples: list[Sample]


class SeriesRecorder:
    def __init__(self, max_samples: int = MAX_SAMPLES) -> None:
        assert max_samples >= 4
        self.samples: list[Sample] = []
        self._max, self._stride, self._ticks = max_samples, 1, 0

    def sample(self, now: float, progress: ShardProgress, load: Callable[[], EngineLoad],
               force: bool = False) -> None:
        """Record one sample every `stride` calls (always when `force`: the first and the last); `load` reads the
        engine's side of it."""
        self._ticks += 1
        if not force and self._ticks % self._stride:
            return
        self.samples.append(Sample(t=now, completed=progress.completed, prompt_tokens=progress.prompt_tokens,
                                   completion_tokens=progress.completion_tokens, **load().model_dump()))
        if len(self.samples) > self._max:
            self.samples = self.samples[::2] if len(self.samples) % 2 else self.samples[::2] + self.samples[-1:]
            self._stride *= 2


def series_name(index: int) -> str:
    return f"{SERIES_PREFIX}{index:05d}.json"


def write_series(prefix: Location, index: int, worker: str, recorder: SeriesRecorder) -> None:
    series = ShardSeries(shard=index, worker=worker, samples=recorder.samples)
    prefix.child(series_name(index)).write_bytes(series.model_dump_json().encode())


def read_series(prefix: Location) -> list[ShardSeries]:
    """Every shard's series under `prefix` (shards from before series existed simply have none)."""
    found = []
    for name in prefix.list_names():
        if name.startswith(SERIES_PREFIX) and name.endswith(".json"):
            found.append(ShardSeries.model_validate(json.loads(prefix.child(name).read_bytes())))
    return sorted(found, key=lambda s: s.shard)
