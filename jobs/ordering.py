"""Order a shard's prompts so that those sharing a prefix (a system prompt, a few-shot preamble) reuse its KV blocks.

A batch job's outputs are keyed by id, so the order is free. Sorting by the prompt's rendered text places prompts
with a common prefix next to each other at every depth (it walks the prefix trie in order), so the engine's prefix
cache holds a preamble's blocks while the prompts that need them run, and evicts it only after they are done.

One refinement: the first prompt of each group ("leader") goes ahead of all groups' followers. A prompt's blocks
are cached only once computed, so a follower admitted in the same step as its leader would compute the preamble a
second time; with the leaders first, each preamble is computed once and its followers find it cached.
"""
from __future__ import annotations

from os.path import commonprefix

from tide.jobs.embeddings import EmbedRow
from tide.jobs.inputs import InputRow

# Prompts sharing fewer characters than this (about one 16-token KV block) gain nothing from sitting together.
MIN_SHARED_CHARS = 64


def prefix_key(row: InputRow) -> str:
    """The prompt's text behind its LoRA adapter's name: KV is cached per adapter, so only prompts of one adapter
    share a prefix, and sorting keeps each adapter's rows together (fewer adapters resident at a time)."""
    if isinstance(row, EmbedRow):
        return ""  # an embedding keeps no KV cache to share: the rows keep their order
    adapter = f"{row.params.lora}\x02" if row.params.lora else ""
    if isinstance(row.prompt, str):
        return adapter + row.prompt
    if row.prompt and isinstance(row.prompt[0], int):  # token ids: five hex digits each, about a text token's width
        return adapter + "\x02" + "".join(f"{t:05x}" for t in row.prompt)
    return adapter + "".join(f"\x00{m['role']}\x01{m['content']}" for m in row.prompt)


def group_by_prefix(rows: list[InputRow]) -> list[InputRow]:
    """Leaders of each shared-prefix group first, then every group's followers, each group kept together."""
    ordered = sorted(rows, key=prefix_key)
    keys = [prefix_key(row) for row in ordered]
    leaders, followers = [], []
    for i, row in enumerate(ordered):
        shares_with_previous = i > 0 and len(commonprefix([keys[i - 1], keys[i]])) >= MIN_SHARED_CHARS
        (followers if shares_with_previous else leaders).append(row)
    return leaders + followers
