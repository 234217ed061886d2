"""One engine per worker process, stepped by one background thread; any thread may submit requests to it.

Each caller hands in a `queue.Queue` as its sink and gets its own finished `RequestOutput`s there, a list per engine
step, so shard tasks on several threads share one continuously refilled batch and each waits only for its own rows
(and wakes once a step, not once a row).
"""
from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from tide.jobs.state import EngineFigures, EngineLoad
from tide.workers.token_bytes import TokenBytes

logger = logging.getLogger("tide.worker")


class EngineFailed(RuntimeError):
    """The engine's step loop raised; every request in flight is lost and the shard must be retried."""


class EngineService:
    def __init__(self, engine, idle_wait_s: float = 0.2, fingerprint: str | None = None) -> None:
        self.engine = engine
        self._fingerprint = fingerprint  # OpenAI's system_fingerprint, from whoever built the engine
        self._token_bytes: TokenBytes | None = None
        self._idle_wait_s = idle_wait_s
        self._sinks: dict[str, queue.Queue] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="tide-engine-step", daemon=True)
        self._thread.start()

    def submit(self, request_id: str, prompt, params, priority: int, sink: queue.Queue) -> None:
        """Queue one request; its output will be put on `sink`. Raises ValueError for a request the engine refuses."""
        if self._failure is not None:
            raise EngineFailed(f"the engine loop stopped: {self._failure!r}")
        with self._lock:
            self._sinks[request_id] = sink
        try:
            self.engine.add_request(request_id, prompt, params, priority=priority)
        except BaseException:
            with self._lock:
                self._sinks.pop(request_id, None)
            raise
        if not self._wake.is_set():  # the flag alone is cheap to read; setting it takes the event's lock
            self._wake.set()

    def abort(self, request_id: str) -> None:
        self.engine.abort(request_id)
        self._wake.set()

    def figures(self) -> EngineFigures:
        stats = self.engine.stats
        return EngineFigures(mean_batch_occupancy=stats.mean_batch_occupancy,
                             prefix_cache_hit_rate=stats.prefix_cache_hit_rate, preemptions=stats.preemptions,
                             busy_time_s=stats.busy_time_s,
                             generation_tokens=stats.generation_tokens,
                             spec_proposed_tokens=stats.spec_proposed_tokens,
                             spec_accepted_tokens=stats.spec_accepted_tokens)

    def load(self) -> EngineLoad:
        stats, blocks = self.engine.stats, self.engine.block_manager
        return EngineLoad(engine_steps=stats.num_steps, preemptions=stats.preemptions,
                          occupancy_sum=stats.mean_batch_occupancy * stats.num_steps,
                          kv_cache_usage=1.0 - blocks.num_free_blocks / blocks.num_blocks)

    def token_bytes(self, token_ids: list[int]) -> list[bytes]:
        """Each token's bytes, read from the engine's tokenizer (each id once per process)."""
        with self._lock:
            if self._token_bytes is None:
                self._token_bytes = TokenBytes(self.engine.tokenizer)
            pieces = self._token_bytes
        return pieces(token_ids)

    def fingerprint(self) -> str | None:
        return self._fingerprint

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            # Clear before looking: a submit that lands after this line sets the event again, so none is missed.
            self._wake.clear()
            if not self.engine.has_unfinished():
                self._wake.wait(self._idle_wait_s)
                continue
            try:
                outputs = self.engine.step()
            except BaseException as exc:  # deliver the failure to every waiter instead of hanging them
                logger.exception("engine step failed")
                self._fail(exc)
                return
            self._deliver(outputs)

    def _deliver(self, outputs) -> None:
        """Each sink gets its step's outputs as one list."""
        batches: dict[int, tuple[queue.Queue, list]] = {}
        with self._lock:
            for output in outputs:
                sink = self._sinks.pop(output.request_id, None)
                if sink is not None:
                    batches.setdefault(id(sink), (sink, []))[1].append(output)
        for sink, batch in batches.values():
            sink.put(batch)

    def _fail(self, exc: BaseException) -> None:
        self._failure = exc
        with self._lock:
            sinks, self._sinks = list(self._sinks.values()), {}
        for sink in sinks:
            sink.put(EngineFailed(f"the engine loop stopped: {exc!r}"))


class BeforeSubmit:
    """An engine service that calls `hook(prompt)` before each row enters the engine, where fault tests freeze or
    kill a worker; everything else is the wrapped service's."""

    def __init__(self, service, hook: Callable[[object], None]) -> None:
        self.service, self.hook = service, hook

    def submit(self, request_id: str, prompt, params, priority: int, sink) -> None:
        self.hook(prompt)
        self.service.submit(request_id, prompt, params, priority, sink)

    def __getattr__(self, name: str):
        return getattr(self.service, name)
