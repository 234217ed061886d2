"""What running shards needs in one process, built once by the worker, `tide run` or the reaper."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tide.jobs.dispatch import Dispatcher
from tide.jobs.engine_client import EngineClient
from tide.jobs.leases.book import LeaseBook
from tide.jobs.leases.keeper import LeaseKeeper
from tide.jobs.ordering import group_by_prefix
from tide.jobs.rows import PromptRow
from tide.jobs.shards.gate import EngineGate
from tide.jobs.storage import StorageConfig
from tide.jobs.store import JobStore


@dataclass(kw_only=True)
class ClaimContext:
    """What claiming, committing and finishing a shard need, without an engine (the reaper expires shards so)."""

    store: JobStore
    dispatcher: Dispatcher
    storage: StorageConfig
    worker: str  # this process's name, recorded on the shards it runs
    clock: Callable[[], float] = time.time
    leases: LeaseBook | None = None  # None for `tide run`: one process, nothing to take over
    keeper: LeaseKeeper | None = None  # renews this process's leases
    max_attempts: int = 3  # runs of one shard before it fails
    retry_delay_s: float = 5.0  # before a failed attempt's shard is sent again


@dataclass(kw_only=True)
class ShardContext(ClaimContext):
    """Running shards on this process's engine as well."""

    service: EngineClient
    poll_s: float = 1.0  # how often progress is published and cancellation and expiry are checked
    order: Callable[[list[PromptRow]], list[PromptRow]] = group_by_prefix  # the order rows enter the engine in
    gate: EngineGate = field(default_factory=EngineGate)  # one per process, like the engine
