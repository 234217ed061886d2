"""Block manager without a model: allocation, refcounts, prefix hits, eviction order, no leaks."""
from tide.engine.block_manager import BlockManager
from tide.engine.sampling_params import SamplingParams
from tide.engine.sequence import Sequence


def make_seq(tokens, **kw) -> Sequence:
    return Sequence("r", list(tokens), SamplingParams(), max_total_tokens=10_000, **kw)


def compute(bm: BlockManager, seq: Sequence, n: int) -> None:
    """What a step does to a sequence: allocate, 'run', advance, register full blocks."""
    assert bm.can_allocate(seq, n)
    bm.allocate(seq, n)
    seq.num_computed_tokens += n
    bm.register_full_blocks(seq)


def test_allocate_grows_block_table_and_free_returns_everything():
    bm = BlockManager(num_blocks=8, block_size=4)
    seq = make_seq(range(10))
    compute(bm, seq, 10)
    assert len(seq.block_table) == 3 and bm.num_free_blocks == 5
    assert all(bm.blocks[b].ref_count == 1 for b in seq.block_table)
    bm.free(seq)
    assert bm.num_free_blocks == 8 and seq.block_table == [] and seq.num_computed_tokens == 0
    assert all(b.ref_count == 0 for b in bm.blocks)


def test_can_allocate_respects_free_blocks_and_reserve():
    bm = BlockManager(num_blocks=2, block_size=4)
    seq = make_seq(range(12))
    assert not bm.can_allocate(seq, 12)
    assert bm.can_allocate(seq, 8)
    assert not bm.can_allocate(seq, 8, reserve=1)


def test_prefix_hit_shares_blocks_and_keeps_last_token_to_recompute():
    bm = BlockManager(num_blocks=16, block_size=4)
    a = make_seq(range(12))
    compute(bm, a, 12)
    b = make_seq(list(range(12)))
    hits = bm.lookup_prefix(b, use_cache=True)
    # 12 tokens = 3 full blocks, but the last prompt token is always recomputed: only 2 blocks may hit.
    assert hits == a.block_table[:2]
    bm.attach_prefix(b, hits)
    assert b.num_computed_tokens == 8 and b.num_cached_tokens == 8
    assert [bm.blocks[x].ref_count for x in hits] == [2, 2]
    compute(bm, b, 4)
    bm.free(a)
    bm.free(b)
    assert bm.num_free_blocks == 16


def test_prefix_chain_stops_at_first_different_block():
    bm = BlockManager(num_blocks=16, block_size=4)
    a = make_seq(list(range(16)))
    compute(bm, a, 16)
    b = make_seq([0, 1, 2, 3, 99, 5, 6, 7, 8, 9, 10, 11, 12])
    assert bm.lookup_prefix(b, use_cache=True) == a.block_table[:1]
    # Same block content at a different position does not hit: hashes are chained to the prefix.
    c = make_seq([4, 5, 6, 7, 4, 5, 6, 7, 0])
    assert bm.lookup_prefix(c, use_cache=True) == []


def test_freed_cached_blocks_are_revived_and_evicted_lru_tail_first():
    bm = BlockManager(num_blocks=4, block_size=2)
    a = make_seq([1, 2, 3, 4, 5, 6, 7])
    compute(bm, a, 7)  # blocks: [1,2] [3,4] [5,6] [7]
    table = list(a.block_table)
    bm.free(a)
    # Freed tail first: the partial tail block is reused first, the first prefix block last.
    assert list(bm.free_queue) == list(reversed(table))
    b = make_seq([1, 2, 3, 4, 5, 6, 9])
    hits = bm.lookup_prefix(b, use_cache=True)
    assert hits == table[:3]
    bm.attach_prefix(b, hits)
    assert bm.num_free_blocks == 1
    # Allocating a new block takes the stale tail block and drops its hash.
    compute(bm, b, 1)
    assert b.block_table[-1] == table[3]
    bm.free(b)


def test_eviction_removes_hash_so_reused_block_cannot_false_hit():
    bm = BlockManager(num_blocks=2, block_size=2)
    a = make_seq([1, 2, 3])
    compute(bm, a, 3)
    bm.free(a)
    c = make_seq([7, 8, 9, 10])
    compute(bm, c, 4)  # reuses both blocks
    bm.free(c)
    d = make_seq([1, 2, 3])
    assert bm.lookup_prefix(d, use_cache=True) == []


def test_prefix_caching_disabled_forgets_blocks_on_free():
    bm = BlockManager(num_blocks=8, block_size=2, enable_prefix_caching=False)
    a = make_seq([1, 2, 3, 4, 5])
    compute(bm, a, 5)
    bm.free(a)
    b = make_seq([1, 2, 3, 4, 5])
    assert bm.lookup_prefix(b, use_cache=True) == []
    assert bm.hash_to_block == {}


def test_hit_rate_counts_prompt_tokens():
    bm = BlockManager(num_blocks=8, block_size=2)
    a = make_seq([1, 2, 3, 4, 5])
    compute(bm, a, 5)
    b = make_seq([1, 2, 3, 4, 5])
    bm.attach_prefix(b, bm.lookup_prefix(b, use_cache=True))
    bm.record_prefix_use(a)
    bm.record_prefix_use(b)
    assert bm.hit_rate == 4 / 10
