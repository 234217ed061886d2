"""`python -P -m tide.benchmarks.kernels_cpu`: the CPU decode-attention strategies timed against each other.

Candidates: the twin's chunked online softmax at several chunk sizes (KiB of K gathered per chunk), a plain
per-sequence gather + SDPA reference, a one-shot gather of every block + one masked SDPA, and the native library
(on an AVX512_BF16 CPU also built without it, `native_no_dpbf16`, to show what vdpbf16ps buys). Shapes default to
SmolLM2-135M decoding a full batch; times are per attention call and per step (x num_layers).
`--prefill 300 256 200 128` times a prefill step instead: prompts of those lengths (no cached prefix) in one call,
the native library against a causal SDPA per prompt, in GFLOP/s of causal attention.

The batch's K/V (22 MB in bf16) fit the L3 cache of many CPUs, which an engine step, reading every layer's cache
in turn, never sees. `--caches N` gives each call the next of N copies of the caches (same contents, other memory),
so with N x the KV size well above the L3 each call reads its KV from DRAM, as the engine does.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from functools import partial
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from tide.kernels.torch_attention import decode_attention, gather_context

DecodeFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[int], float], torch.Tensor]


def per_sequence_decode(q, k_cache, v_cache, block_tables, seq_lens, scale) -> torch.Tensor:
    """Reference: one gather and one SDPA per sequence."""
    outs = []
    for b, seq_len in enumerate(seq_lens):
        k = gather_context(k_cache, block_tables[b], seq_len).transpose(0, 1)
        v = gather_context(v_cache, block_tables[b], seq_len).transpose(0, 1)
        o = F.scaled_dot_product_attention(q[b][:, None, :], k, v, scale=scale, enable_gqa=True)
        outs.append(o[:, 0, :])
    return torch.stack(outs)


def full_gather_decode(q, k_cache, v_cache, block_tables, seq_lens, scale) -> torch.Tensor:
    """Every block of every sequence gathered at once, then one masked SDPA over the padded batch."""
    num_seqs, block_size = q.shape[0], k_cache.shape[1]
    max_blocks = -(-max(seq_lens) // block_size)
    blocks = block_tables[:, :max_blocks].reshape(-1)
    k = k_cache.index_select(0, blocks).view(num_seqs, max_blocks * block_size, *k_cache.shape[2:])
    v = v_cache.index_select(0, blocks).view(num_seqs, max_blocks * block_size, *v_cache.shape[2:])
    lens = torch.tensor(seq_lens)
    mask = (torch.arange(max_blocks * block_size)[None, :] < lens[:, None])[:, None, None, :]
    o = F.scaled_dot_product_attention(
        q[:, :, None, :], k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, scale=scale, enable_gqa=True
    )
    return o[:, :, 0, :]


def chunked(chunk_kib: int) -> DecodeFn:
    def run(q, k_cache, v_cache, block_tables, seq_lens, scale):
        return decode_attention(q, k_cache, v_cache, block_tables, seq_lens, scale, chunk_kib << 10)

    return run


def native(library) -> DecodeFn:
    """The native library's paged attention (kernels/csrc) on the same decode batch."""
    from tide.kernels import native_ops
    from tide.kernels.metadata import AttentionMetadata

    def run(q, k_cache, v_cache, block_tables, seq_lens, scale):
        n = len(seq_lens)
        meta = AttentionMetadata(torch.arange(n + 1, dtype=torch.int32), torch.tensor(seq_lens, dtype=torch.int32),
                                 block_tables.to(torch.int32), n, 1, max(seq_lens), [1] * n, list(seq_lens))
        return native_ops.paged_attention(q, k_cache, v_cache, meta, scale, library=library)

    return run


def make_batch(args: argparse.Namespace, dtype: torch.dtype, gen: torch.Generator):
    """Random decode batch with shuffled block tables over a cache just large enough to hold it."""
    lens = torch.randint(args.min_ctx, args.max_ctx + 1, (args.batch,), generator=gen).tolist()
    per_seq = [-(-n // args.block_size) for n in lens]
    num_blocks = sum(per_seq) + 1
    shape = (num_blocks, args.block_size, args.kv_heads, args.head_dim)
    k_cache = torch.randn(shape, generator=gen).to(dtype)
    v_cache = torch.randn(shape, generator=gen).to(dtype)
    ids = torch.randperm(num_blocks, generator=gen).to(torch.int32)
    tables = torch.zeros(args.batch, max(per_seq), dtype=torch.int32)
    used = 0
    for b, n in enumerate(per_seq):
        tables[b, :n] = ids[used : used + n]
        used += n
    q = torch.randn(args.batch, args.q_heads, args.head_dim, generator=gen).to(dtype)
    return q, k_cache, v_cache, tables, lens


def rotating(fn: DecodeFn, turn: Iterator[int], q, copies: list, tables, lens, scale) -> Callable[[], torch.Tensor]:
    """fn on the next of the cache copies at each call, counted by `turn`, which all candidates share so that no
    call finds its KV still cached from the call before it, whichever candidate made that one."""

    def run():
        k_cache, v_cache = copies[next(turn) % len(copies)]
        return fn(q, k_cache, v_cache, tables, lens, scale)

    return run


def time_round_robin(fns: dict[str, Callable[[], torch.Tensor]], reps: int) -> dict[str, float]:
    """Best-of-reps seconds per candidate, candidates interleaved so load from other processes hits all alike."""
    best = {name: float("inf") for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def run_cpu_bench(args: argparse.Namespace) -> None:
    candidates: dict[str, DecodeFn] = {
        "per_sequence_sdpa": per_sequence_decode,
        "full_gather_sdpa": full_gather_decode,
    }
    for kib in args.chunk_kib:
        candidates[f"chunked_{kib}KiB"] = chunked(kib)
    from tide.kernels import native as native_library

    best_build = native_library.load()
    if best_build is not None:
        candidates["native"] = native(best_build)
        if best_build.bf16_dot_products:  # the same kernels with bf16 widened to fp32 FMAs, for the comparison
            candidates["native_no_dpbf16"] = native(native_library.load(isa="avx512"))
    gen = torch.Generator().manual_seed(0)
    scale = args.head_dim**-0.5
    print(f"decode attention: batch {args.batch}, ctx {args.min_ctx}-{args.max_ctx}, Hq {args.q_heads}, "
          f"Hkv {args.kv_heads}, D {args.head_dim}, block {args.block_size}; best of {args.reps} per call, "
          f"x{args.layers} layers per step; error vs float64")
    for dtype in (torch.float32, torch.bfloat16):
        q, k_cache, v_cache, tables, lens = make_batch(args, dtype, gen)
        tables = tables.long()
        kv_bytes = 2 * sum(lens) * args.kv_heads * args.head_dim * k_cache.element_size()
        expected = per_sequence_decode(q.double(), k_cache.double(), v_cache.double(), tables, lens, scale)
        errors = {
            name: (fn(q, k_cache, v_cache, tables, lens, scale).double() - expected).abs().max().item()
            for name, fn in candidates.items()
        }
        copies = [(k_cache, v_cache)] + [(k_cache.clone(), v_cache.clone()) for _ in range(args.caches - 1)]
        for threads in args.threads:
            torch.set_num_threads(threads)
            turn = itertools.count()
            calls = {name: rotating(fn, turn, q, copies, tables, lens, scale) for name, fn in candidates.items()}
            best = time_round_robin(calls, args.reps)
            base = best["per_sequence_sdpa"]
            for name, sec in best.items():
                print(f"{str(dtype)[6:]:>8} threads={threads} {name:>18}: {sec * 1e3:7.2f} ms "
                      f"({sec * args.layers * 1e3:6.0f} ms/step, {kv_bytes / sec / 1e9:5.1f} GB/s of KV, "
                      f"x{base / sec:4.2f} vs per-seq, max err {errors[name]:.1e})")


def sdpa_prefill(q, k_cache, v_cache, tables, lens, scale) -> torch.Tensor:
    """Reference: each prompt's keys gathered, one causal SDPA over its query rows."""
    outs, start = [], 0
    for b, n in enumerate(lens):
        k = gather_context(k_cache, tables[b], n).transpose(0, 1)
        v = gather_context(v_cache, tables[b], n).transpose(0, 1)
        o = F.scaled_dot_product_attention(q[start:start + n].transpose(0, 1), k, v, is_causal=True, scale=scale,
                                           enable_gqa=True)
        outs.append(o.transpose(0, 1))
        start += n
    return torch.cat(outs)


def native_prefill(library) -> DecodeFn:
    """The native library's paged attention on a batch of whole prompts."""
    from tide.kernels import native_ops
    from tide.kernels.metadata import AttentionMetadata

    def run(q, k_cache, v_cache, tables, lens, scale):
        starts = torch.tensor([0, *itertools.accumulate(lens)], dtype=torch.int32)
        meta = AttentionMetadata(starts, torch.tensor(lens, dtype=torch.int32), tables.to(torch.int32), 0,
                                 max(lens), max(lens), list(lens), list(lens))
        return native_ops.paged_attention(q, k_cache, v_cache, meta, scale, library=library)

    return run


def run_prefill_bench(args: argparse.Namespace) -> None:
    from tide.kernels import native as native_library

    candidates: dict[str, DecodeFn] = {"sdpa_per_prompt": sdpa_prefill}
    best_build = native_library.load()
    if best_build is not None:
        candidates["native"] = native_prefill(best_build)
        if best_build.bf16_dot_products:
            candidates["native_no_dpbf16"] = native_prefill(native_library.load(isa="avx512"))
    lens, gen, scale = args.prefill, torch.Generator().manual_seed(0), args.head_dim**-0.5
    flops = sum(4 * n * (n + 1) / 2 * args.head_dim * args.q_heads for n in lens)
    print(f"prefill attention: prompts of {lens} tokens, Hq {args.q_heads}, Hkv {args.kv_heads}, D {args.head_dim}, "
          f"block {args.block_size}; best of {args.reps} per call; error vs float64")
    for dtype in (torch.float32, torch.bfloat16):
        shape = argparse.Namespace(**{**vars(args), "batch": len(lens), "min_ctx": max(lens), "max_ctx": max(lens)})
        _, k_cache, v_cache, tables, _ = make_batch(shape, dtype, gen)  # room for the longest prompt in each row
        q = torch.randn(sum(lens), args.q_heads, args.head_dim, generator=gen).to(dtype)
        tables = tables.long()
        expected = sdpa_prefill(q.double(), k_cache.double(), v_cache.double(), tables, lens, scale)
        errors = {name: (fn(q, k_cache, v_cache, tables, lens, scale).double() - expected).abs().max().item()
                  for name, fn in candidates.items()}
        for threads in args.threads:
            torch.set_num_threads(threads)
            calls = {name: partial(fn, q, k_cache, v_cache, tables, lens, scale) for name, fn in candidates.items()}
            best = time_round_robin(calls, args.reps)
            for name, sec in best.items():
                print(f"{str(dtype)[6:]:>8} threads={threads} {name:>18}: {sec * 1e3:7.2f} ms "
                      f"({flops / sec / 1e9:6.1f} GFLOP/s, x{best['sdpa_per_prompt'] / sec:4.2f} vs SDPA, "
                      f"max err {errors[name]:.1e})")


def add_shape_args(parser: argparse.ArgumentParser) -> None:
    """The attention shapes both kernel benchmarks take (SmolLM2-135M's by default)."""
    parser.add_argument("--q-heads", type=int, default=9)
    parser.add_argument("--kv-heads", type=int, default=3)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--block-size", type=int, default=16)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -P -m tide.benchmarks.kernels_cpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--min-ctx", type=int, default=300)
    parser.add_argument("--max-ctx", type=int, default=600)
    add_shape_args(parser)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--chunk-kib", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--caches", type=int, default=1,
                        help="copies of the KV caches, one per call in turn (30: an engine step's layers, from DRAM)")
    parser.add_argument("--prefill", type=int, nargs="+", metavar="TOKENS",
                        help="time a prefill of prompts of these lengths instead of the decode batch")
    args = parser.parse_args(argv)
    run_prefill_bench(args) if args.prefill else run_cpu_bench(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
