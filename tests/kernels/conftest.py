"""Kernel tests run the Triton kernels in the interpreter (no GPU in CI)."""
import os
import sys
from dataclasses import dataclass

import pytest
import torch

from tests.helpers.kernel_device import DEVICE, ON_GPU
from tide.kernels.metadata import AttentionMetadata


def _use_triton_interpreter() -> None:
    """Triton decides when it is imported whether @triton.jit functions (its own tl.* library included) are
    interpreted. tests/conftest.py imports transformers, which imports triton through torch._dynamo before this
    file runs, so a triton imported without TRITON_INTERPRET is dropped here and imported afresh with it."""
    if os.environ.get("TRITON_INTERPRET") or ON_GPU:
        return
    os.environ["TRITON_INTERPRET"] = "1"
    # The compiled extension (triton._C) stays: it cannot be initialised twice in one process.
    stale = [
        name for name in sys.modules
        if (name.split(".")[0] == "triton" and not name.startswith("triton._C"))
        or name.startswith("tide.kernels.triton")
    ]
    for name in stale:
        del sys.modules[name]


_use_triton_interpreter()


@dataclass
class PagedBatch:
    q: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    meta: AttentionMetadata
    scale: float


def build_paged_batch(
    decode_lens: list[int], prefills: list[tuple[int, int]], num_q_heads: int, num_kv_heads: int, head_dim: int,
    block_size: int, dtype: torch.dtype, poison: float, seed: int, device: torch.device = DEVICE,
) -> PagedBatch:
    """Random batch of decodes (context lengths) then prefill chunks ((context length, chunk length) pairs) over
    a cache whose blocks are handed out in shuffled order.

    Cache slots that hold no token of the batch are filled with `poison`, so reading past a sequence shows up.
    Drawn on the CPU, then moved to `device`.
    """
    gen = torch.Generator().manual_seed(seed)
    seq_lens = list(decode_lens) + [seq_len for seq_len, _ in prefills]
    query_lens = [1] * len(decode_lens) + [q_len for _, q_len in prefills]
    per_seq = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(per_seq) + 3
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.full(shape, poison, dtype=dtype)
    v_cache = torch.full(shape, poison, dtype=dtype)
    ids = torch.randperm(num_blocks, generator=gen)
    tables = torch.zeros(len(seq_lens), max(per_seq) + 1, dtype=torch.int32)
    used = 0
    for b, (seq_len, n) in enumerate(zip(seq_lens, per_seq)):
        tables[b, :n] = ids[used : used + n].to(torch.int32)
        used += n
        slots = (tables[b, :n].long()[:, None] * block_size + torch.arange(block_size)).flatten()[:seq_len]
        for cache in (k_cache, v_cache):
            cache.view(-1, num_kv_heads, head_dim)[slots] = torch.randn(
                seq_len, num_kv_heads, head_dim, generator=gen).to(dtype)
    starts = [0]
    for n in query_lens:
        starts.append(starts[-1] + n)
    meta = AttentionMetadata(
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        block_tables=tables.to(device),
        num_decodes=len(decode_lens),
        max_query_len=max(query_lens),
        max_seq_len=max(seq_lens),
        query_lens_host=list(query_lens),
        seq_lens_host=list(seq_lens),
    )
    q = torch.randn(starts[-1], num_q_heads, head_dim, generator=gen).to(dtype)
    return PagedBatch(q.to(device), k_cache.to(device), v_cache.to(device), meta, head_dim**-0.5)


@pytest.fixture
def paged_batch():
    """The batch builder, as a fixture so test modules need not import conftest."""
    return build_paged_batch


# The modules that exercise the Triton kernels and the twins; the others test the CPU's native library.
GPU_MODULES = {"test_attention.py", "test_elementwise.py", "test_engine_triton.py"}


def pytest_collection_modifyitems(items):
    if not ON_GPU:
        return
    cpu_only = pytest.mark.skip(reason="CPU kernels: run these without TIDE_TEST_DEVICE")
    for item in items:
        if item.path.name not in GPU_MODULES and item.path.parent.name == "kernels":
            item.add_marker(cpu_only)
