"""Scheduler without a model: budgets, caps, chunked prefill, preemption order, no starvation, no leaks."""
import random

from tide.engine.block_manager import BlockManager
from tide.engine.sampling_params import SamplingParams
from tide.engine.scheduler import Scheduler
from tide.engine.sequence import Sequence


def make_seq(n_prompt, max_tokens=4, priority=0, order=0, rid=None, start=0) -> Sequence:
    params = SamplingParams(max_tokens=max_tokens)
    return Sequence(rid or f"r{order}", list(range(start, start + n_prompt)), params, priority=priority,
                    arrival_order=order, max_total_tokens=10_000)


def run_step(sched: Scheduler, finished: list[Sequence]):
    """One engine step with a fake model: every sequence that reaches its end 'samples' token 7."""
    out = sched.schedule()
    for seq, n in out.scheduled:
        seq.num_computed_tokens += n
        sched.block_manager.register_full_blocks(seq)
        if seq.num_computed_tokens == seq.num_tokens:
            seq.token_ids.append(7)
            seq.output_token_ids.append(7)
            if seq.num_output_tokens >= seq.params.max_tokens:
                sched.finish(seq)
                finished.append(seq)
    return out


def drain(sched: Scheduler, max_steps=10_000):
    finished, steps = [], []
    while sched.has_unfinished():
        steps.append(run_step(sched, finished))
        assert len(steps) < max_steps, "scheduler made no progress"
    return finished, steps


def test_budget_and_sequence_cap_never_exceeded_and_chunked_prefill():
    bm = BlockManager(num_blocks=200, block_size=4)
    sched = Scheduler(bm, max_num_seqs=3, max_num_batched_tokens=10, use_prefix_cache=False)
    rng = random.Random(0)
    seqs = [make_seq(rng.randint(1, 30), max_tokens=rng.randint(1, 6), order=i) for i in range(12)]
    for s in seqs:
        sched.add(s)
    finished, steps = drain(sched)
    assert sorted(s.seq_id for s in finished) == sorted(s.seq_id for s in seqs)
    assert all(out.num_tokens <= 10 for out in steps)
    assert all(len(out.scheduled) <= 3 for out in steps)
    assert any(n < s.num_prompt_tokens and n > 1 for out in steps for s, n in out.scheduled)  # chunking happened
    assert all(s.num_output_tokens == s.params.max_tokens for s in seqs)
    assert bm.num_free_blocks == 200 and all(b.ref_count == 0 for b in bm.blocks)


def test_decodes_come_first_and_mix_with_prefill():
    bm = BlockManager(num_blocks=100, block_size=4)
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=16, use_prefix_cache=False)
    sched.add(make_seq(5, max_tokens=10, order=0))
    finished = []
    run_step(sched, finished)
    sched.add(make_seq(30, order=1))
    out = run_step(sched, finished)
    assert [n for _, n in out.scheduled] == [1, 15]


def test_priority_then_fcfs_admission():
    bm = BlockManager(num_blocks=100, block_size=4)
    sched = Scheduler(bm, max_num_seqs=1, max_num_batched_tokens=100, use_prefix_cache=False)
    low, high, high2 = make_seq(4, 1, 0, 0), make_seq(4, 1, 5, 1), make_seq(4, 1, 5, 2)
    for s in (low, high, high2):
        sched.add(s)
    finished, _ = drain(sched)
    assert [s.seq_id for s in finished] == [high.seq_id, high2.seq_id, low.seq_id]


def test_preemption_takes_lowest_priority_latest_and_loses_nothing():
    bm = BlockManager(num_blocks=6, block_size=4)  # 24 token slots
    sched = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=64, use_prefix_cache=False)
    sched.watermark_blocks = 0
    a = make_seq(4, max_tokens=8, priority=1, order=0)
    b = make_seq(4, max_tokens=8, priority=0, order=1)
    c = make_seq(4, max_tokens=8, priority=0, order=2)
    for s in (a, b, c):
        sched.add(s)
    finished, steps = drain(sched)
    preempted = [s for out in steps for s in out.preempted]
    assert preempted, "the KV budget was meant to force preemption"
    assert preempted[0] is c  # lowest priority, latest arrival goes first
    assert a not in preempted
    assert sched.num_preemptions == len(preempted)
    for s in (a, b, c):  # recomputed after preemption, never duplicated or lost
        assert s.output_token_ids == [7] * 8
        assert s.token_ids == list(range(4)) + [7] * 8
    assert bm.num_free_blocks == 6


def test_no_starvation_under_constant_arrivals():
    bm = BlockManager(num_blocks=50, block_size=4)
    sched = Scheduler(bm, max_num_seqs=2, max_num_batched_tokens=8, use_prefix_cache=False)
    first = make_seq(20, max_tokens=3, order=0)
    sched.add(first)
    finished, order = [], 1
    for _ in range(200):
        sched.add(make_seq(3, max_tokens=1, order=order))
        order += 1
        run_step(sched, finished)
        if first in finished:
            break
    assert first in finished


def test_prefix_cache_used_by_later_request_and_hit_rate():
    bm = BlockManager(num_blocks=100, block_size=4)
    sched = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=64, use_prefix_cache=True)
    sched.add(make_seq(17, max_tokens=1, order=0))
    drain(sched)
    b = make_seq(17, max_tokens=1, order=1)
    sched.add(b)
    out = sched.schedule()
    assert out.scheduled == [(b, 1)] and b.num_cached_tokens == 16
    assert bm.hit_rate == 16 / 34


def test_finish_of_waiting_sequence_frees_it_from_the_queue():
    bm = BlockManager(num_blocks=100, block_size=4)
    sched = Scheduler(bm, max_num_seqs=1, max_num_batched_tokens=64, use_prefix_cache=False)
    a, b = make_seq(4, order=0), make_seq(4, order=1)
    sched.add(a)
    sched.add(b)
    sched.schedule()
    sched.finish(b)  # aborted while waiting
    sched.finish(a)  # aborted while running
    assert not sched.has_unfinished() and bm.num_free_blocks == 100


def test_waits_for_a_shared_prefix_in_flight_instead_of_computing_it_twice():
    bm = BlockManager(num_blocks=100, block_size=4)
    sched = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=64, use_prefix_cache=True)
    leader, follower = make_seq(13, order=0), make_seq(13, order=1)
    other = make_seq(13, order=2, start=50)
    for s in (leader, follower, other):
        sched.add(s)
    finished = []
    first = run_step(sched, finished)
    assert [s for s, _ in first.scheduled] == [leader, other]  # the follower is held back, the other goes ahead
    second = run_step(sched, finished)
    assert (follower, 1) in second.scheduled and follower.num_cached_tokens == 12


def test_no_waiting_for_prefixes_when_prefix_caching_is_off():
    bm = BlockManager(num_blocks=100, block_size=4)
    sched = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=64, use_prefix_cache=False)
    a, b = make_seq(13, order=0), make_seq(13, order=1)
    sched.add(a)
    sched.add(b)
    assert [s for s, _ in sched.schedule().scheduled] == [a, b]


def test_followers_of_a_cached_prefix_are_admitted_together():
    bm = BlockManager(num_blocks=100, block_size=4)
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=64, use_prefix_cache=True)
    finished = []
    sched.add(make_seq(13, order=0))
    run_step(sched, finished)  # the shared prefix is now cached
    followers = [make_seq(13, order=i) for i in range(1, 5)]
    for s in followers:
        sched.add(s)
    out = run_step(sched, finished)
    assert {s.seq_id for s, _ in out.scheduled} >= {s.seq_id for s in followers}
    assert all(s.num_cached_tokens == 12 for s in followers)
