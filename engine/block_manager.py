"""Paged KV-cache bookkeeping: fixed-size blocks, block tables, and the prefix cache."""
from __future__ import annotations

from collections import OrderedDict

from tide.engine.sequence import Sequence

_NO_HASH = -1


class Block:
    """One physical KV block. `block_hash` is set once the block is full and its KV written."""

    __slots__ = ("block_id", "ref_count", "block_hash", "token_ids")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_count = 0
        self.block_hash = _NO_HASH
        self.token_ids: tuple[int, ...] = ()


def chain_hash(parent_hash: int, token_ids: tuple[int, ...]) -> int:
    """Hash of a full block, chained to the hash of the block before it, so equal hashes mean equal prefixes."""
    return hash((parent_hash, token_ids))


class BlockManager:
    """Hands out blocks to sequences and keeps a content-addressed cache of full blocks.

    Free blocks sit in an LRU queue; a freed block keeps its hash until it is reused, so a later request with the same
    prefix can revive it. A sequence frees its blocks tail first, so its prefix blocks are the last to be evicted.
    """

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        assert num_blocks > 0 and block_size > 0
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_queue: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.hash_to_block: dict[int, int] = {}
        self.prefix_queries = 0  # prompt tokens looked up in the prefix cache
        self.prefix_hits = 0  # prompt tokens served from it

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_queue)

    @property
    def hit_rate(self) -> float:
        return self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # ---- prefix cache -------------------------------------------------------------------------------------------

    def block_hashes(self, seq: Sequence) -> list[int]:
        """Chained hashes of every full block of `seq`'s tokens, kept on the sequence (tokens only get appended)."""
        hashes = seq.block_hashes
        size = self.block_size
        for i in range(len(hashes), seq.num_tokens // size):
            parent = hashes[-1] if hashes else seq.hash_root
            hashes.append(chain_hash(parent, tuple(seq.token_ids[i * size:(i + 1) * size])))
        return hashes

    def lookup_prefix(self, seq: Sequence, use_cache: bool) -> list[int]:
        """Longest run of cached full blocks that prefixes `seq`, leaving its last token (and any a prompt logprob needs)
        to be recomputed."""
        hits: list[int] = []
        if not use_cache:
            return hits
        usable = seq.num_cacheable_tokens // self.block_size
        for i, block_hash in enumerate(self.block_hashes(seq)[:usable]):
            block_id = self.hash_to_block.get(block_hash)
            tokens = tuple(seq.token_ids[i * self.block_size:(i + 1) * self.block_size])
            if block_id is None or self.blocks[block_id].token_ids != tokens:
                break
            hits.append(block_id)
        return hits

    def record_prefix_use(self, seq: Sequence) -> None:
        """Count a newly admitted prompt toward the prefix-cache hit rate."""
        self.prefix_queries += seq.num_prompt_tokens
        self.prefix_hits += seq.num_cached_tokens

    def attach_prefix(self, seq: Sequence, block_ids: list[int]) -> None:
        """Give a waiting sequence (no blocks yet) the cached blocks found by `lookup_prefix`."""
        assert not seq.block_table
        for block_id in block_ids:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self.free_queue[block_id]
            block.ref_count += 1
        seq.block_table = list(block_ids)
        seq.num_computed_tokens = len(block_ids) * self.block_size
        seq.num_cached_tokens = seq.num_computed_tokens

    def register_full_blocks(self, seq: Sequence) -> None:
        """Hash the blocks that the last step filled, so later requests can share them.

        Blocks fill in order, so the unhashed full blocks are a run at the end of the full ones. A block holding a
        draft token (not yet verified, maybe rejected) is left out until its tokens are accepted.
        """
        verified = min(seq.num_computed_tokens, seq.num_tokens - seq.num_draft_tokens)
        i = min(verified // self.block_size, len(seq.block_table))
        hashes = self.block_hashes(seq)
        while i > 0 and self.blocks[seq.block_table[i - 1]].block_hash == _NO_HASH:
            i -= 1
            block = self.blocks[seq.block_table[i]]
            block.token_ids = tuple(seq.token_ids[i * self.block_size:(i + 1) * self.block_size])
            block.block_hash = hashes[i]
            self.hash_to_block.setdefault(block.block_hash, block.block_id)

    # ---- allocation -----------------------------------------------------------------------------------------------

    def can_allocate(self, seq: Sequence, num_new_tokens: int, reserve: int = 0) -> bool:
        needed = self.blocks_needed(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table)
        return needed + reserve <= self.num_free_blocks

    def allocate(self, seq: Sequence, num_new_tokens: int) -> None:
        """Grow the block table to hold the computed tokens plus `num_new_tokens`."""
        needed = self.blocks_needed(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table)
        assert needed <= self.num_free_blocks, "allocate() without can_allocate()"
        for _ in range(needed):
            seq.block_table.append(self._take_free_block())

    def free(self, seq: Sequence) -> None:
        """Release a sequence's blocks, tail first, and reset its progress."""
        for block_id in reversed(seq.block_table):
            self._release(block_id)
        seq.block_table = []
        seq.num_computed_tokens = 0

    def fork(self, parent: Sequence, child: Sequence, share: bool = True) -> list[tuple[int, int]]:
        """Give `child` (no blocks yet) the KV of `parent`'s computed tokens; return the (src, dst) blocks to copy.

        The parent's full blocks are shared (copy-on-write needs no copy: nobody writes a full block); only its
        partially filled last block is copied into a fresh block. With `share=False` every block is copied (to
        measure what sharing saves). Without enough free blocks, the child keeps what it could get and
        recomputes the rest.
        """
        assert not child.block_table
        size = self.block_size
        num_full = parent.num_computed_tokens // size
        shared = parent.block_table[:num_full] if share else []
        for block_id in shared:
            self.blocks[block_id].ref_count += 1
        child.block_table = list(shared)
        copies = []
        for src in parent.block_table[len(shared):self.blocks_needed(parent.num_computed_tokens)]:
            if not self.free_queue:
                break
            dst = self._take_free_block()
            child.block_table.append(dst)
            copies.append((src, dst))
        child.num_computed_tokens = min(parent.num_computed_tokens, len(child.block_table) * size)
        return copies

    def trim_hashes(self, seq: Sequence) -> None:
        """Forget the hashes of blocks no longer full of `seq`'s tokens, after tokens were cut from its end."""
        del seq.block_hashes[seq.num_tokens // self.block_size:]

    def roll_back(self, seq: Sequence, num_computed: int) -> None:
        """After rejected draft tokens were cut from `seq.token_ids`: keep the KV of its first `num_computed`
        tokens and free the blocks past those.

        The freed blocks were never registered in the prefix cache (register_full_blocks skips draft tokens).
        """
        self.trim_hashes(seq)
        keep = self.blocks_needed(num_computed)
        for block_id in reversed(seq.block_table[keep:]):
            self._release(block_id)
        del seq.block_table[keep:]
        seq.num_computed_tokens = num_computed

    def _release(self, block_id: int) -> None:
        block = self.blocks[block_id]
        block.ref_count -= 1
        assert block.ref_count >= 0
        if block.ref_count == 0:
            if not self.enable_prefix_caching:
                self._forget(block)
            self.free_queue[block_id] = None

    def _take_free_block(self) -> int:
        block_id, _ = self.free_queue.popitem(last=False)
        block = self.blocks[block_id]
        self._forget(block)
        block.ref_count = 1
        return block_id

    def _forget(self, block: Block) -> None:
        if block.block_hash != _NO_HASH and self.hash_to_block.get(block.block_hash) == block.block_id:
            del self.hash_to_block[block.block_hash]
        block.block_hash = _NO_HASH
        block.token_ids = ()
