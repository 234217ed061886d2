"""Continuous batching: one token budget per step, running sequences first, chunked prefill, preemption."""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Protocol

from tide.engine.block_manager import BlockManager
from tide.engine.sequence import Sequence, SequenceStatus


@dataclass
class SchedulerOutput:
    """What to compute this step: each sequence with its number of new tokens, decodes first."""

    scheduled: list[tuple[Sequence, int]] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class AdmissionGate(Protocol):
    """Says whether a waiting sequence may join the running ones now (the LoRA registry: once its adapter is
    resident)."""

    def admit(self, seq: Sequence, running: list[Sequence]) -> bool: ...


class AdmitAll:
    def admit(self, seq: Sequence, running: list[Sequence]) -> bool:
        return True


class Scheduler:
    """Decides, each step, which sequences advance and by how many tokens.

    Running sequences are served first in priority order; waiting ones join while the token budget, the sequence cap
    and free blocks allow. When a running sequence cannot get a block, the lowest-priority, latest sequence is
    preempted: its blocks are freed and it is recomputed later (all-or-nothing).
    """

    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int,
                 use_prefix_cache: bool, gate: AdmissionGate = AdmitAll()) -> None:
        self.block_manager = block_manager
        self.gate = gate
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.use_prefix_cache = use_prefix_cache
        self.waiting: list[tuple[tuple[int, int, int], int, Sequence]] = []  # heap by Sequence.sort_key
        self.running: list[Sequence] = []  # kept sorted by Sequence.sort_key
        self.num_preemptions = 0
        # Admission leaves a few blocks spare so running decodes rarely have to preempt right after a join.
        self.watermark_blocks = max(1, block_manager.num_blocks // 100)

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        heapq.heappush(self.waiting, (seq.sort_key, seq.seq_id, seq))

    def adopt(self, seq: Sequence) -> None:
        """Run a sequence that already holds blocks (a forked beam) from the next step on, without admission."""
        seq.status = SequenceStatus.RUNNING
        self._insert_running(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self._schedule_running(out, self.max_num_batched_tokens)
        if not out.preempted:
            self._schedule_waiting(out, budget)
            while not out.scheduled and self.waiting and self._preempt_parked(out):
                self._schedule_waiting(out, budget)
        # Decodes first, as AttentionMetadata expects; within each, the rows of one adapter side by side (LoRA runs).
        out.scheduled.sort(key=lambda item: (item[1] != 1, item[0].params.lora or ""))
        return out

    def _schedule_running(self, out: SchedulerOutput, budget: int) -> int:
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            num_new = min(seq.num_uncomputed_tokens, budget)
            if num_new == 0:  # a beam waiting for the rest of its group keeps its blocks and its place
                i += 1
                continue
            while not self.block_manager.can_allocate(seq, num_new):
                victim = self.running.pop()
                self._preempt(victim, out)
                if victim is seq:
                    break
            else:
                self.block_manager.allocate(seq, num_new)
                out.scheduled.append((seq, num_new))
                budget -= num_new
                i += 1
        return budget

    def _schedule_waiting(self, out: SchedulerOutput, budget: int) -> None:
        # A prompt whose next uncached block is being computed right now by another prefilling sequence waits for
        # it, then reuses it from the prefix cache instead of computing the same prefix twice in parallel.
        bm = self.block_manager
        in_flight: set[int] = set()
        for s in self.running:
            if s.num_computed_tokens < s.num_prompt_tokens:
                in_flight.update(bm.block_hashes(s)[s.num_computed_tokens // bm.block_size:])
        deferred = []
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0][2]
            use_cache = self.use_prefix_cache or seq.index > 0
            hits = bm.lookup_prefix(seq, use_cache)  # waiting sequences hold no blocks
            upcoming = bm.block_hashes(seq)[len(hits):] if use_cache else []
            if (upcoming and upcoming[0] in in_flight) or not self.gate.admit(seq, self.running):
                deferred.append(heapq.heappop(self.waiting))
                continue
            bm.attach_prefix(seq, hits)
            num_new = min(seq.num_uncomputed_tokens, budget)
            if not self.block_manager.can_allocate(seq, num_new, reserve=self.watermark_blocks):
                if not out.scheduled and not any(s.num_uncomputed_tokens for s in self.running):
                    # Nothing else is computing (at most beams waiting for their group hold blocks): the watermark
                    # must not block the only candidate.
                    if not self.block_manager.can_allocate(seq, num_new):
                        num_new = self._largest_fitting_chunk(seq)
                    if num_new == 0:
                        self.block_manager.free(seq)
                        break
                else:
                    self.block_manager.free(seq)  # give back revived prefix blocks while it waits
                    break
            heapq.heappop(self.waiting)
            if seq.num_admissions == 0:
                self.block_manager.record_prefix_use(seq)
            seq.num_admissions += 1
            self.block_manager.allocate(seq, num_new)
            seq.status = SequenceStatus.RUNNING
            self._insert_running(seq)
            out.scheduled.append((seq, num_new))
            budget -= num_new
            in_flight.update(upcoming)
        for item in deferred:
            heapq.heappush(self.waiting, item)

    def _largest_fitting_chunk(self, seq: Sequence) -> int:
        capacity = (len(seq.block_table) + self.block_manager.num_free_blocks) * self.block_manager.block_size
        return max(0, min(seq.num_uncomputed_tokens, capacity - seq.num_computed_tokens))

    def _insert_running(self, seq: Sequence) -> None:
        keys = [s.sort_key for s in self.running]
        pos = next((j for j, k in enumerate(keys) if k > seq.sort_key), len(keys))
        self.running.insert(pos, seq)

    def _preempt_parked(self, out: SchedulerOutput) -> bool:
        """Preempt the latest beam that waits for its group, so that a waiting sequence can get its blocks or slot
        when nothing else runs (groups holding each other's memory would otherwise stall)."""
        for i in range(len(self.running) - 1, -1, -1):
            if self.running[i].num_uncomputed_tokens == 0:
                self._preempt(self.running.pop(i), out)
                return True
        return False

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        self.block_manager.free(seq)
        self.num_preemptions += 1
        out.preempted.append(seq)
        self.add(seq)

    def finish(self, seq: Sequence) -> None:
        """Remove a finished or aborted sequence from the queues and free its blocks."""
        if seq.status is SequenceStatus.RUNNING and seq in self.running:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting = [item for item in self.waiting if item[2] is not seq]
            heapq.heapify(self.waiting)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED
