"""`python -P -m tide.benchmarks.kernels`: times each Triton kernel on CUDA against its PyTorch twin and against the
bytes/FLOPs floor of the GPU, and checks the Triton results against the twins' in bf16 and fp16.

Without CUDA it says so and exits 0. The CPU's attention strategies have their own benchmark,
`python -P -m tide.benchmarks.kernels_cpu`.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from tide.benchmarks.kernels_cpu import add_shape_args
from tide.kernels import build_cos_sin_cache, torch_ops
from tide.kernels.metadata import AttentionMetadata


@dataclass
class Case:
    """One op on one shape: both backends' calls, the bytes it must move and the FLOPs it must do."""

    name: str
    triton_fn: Callable[[], torch.Tensor]
    twin_fn: Callable[[], torch.Tensor]
    bytes_moved: float
    flops: float
    tolerance: float


def paged_batch(decode_lens: list[int], prefills: list[tuple[int, int]], hq: int, hkv: int, head_dim: int,
                block_size: int, dtype: torch.dtype):
    """Random batch on the GPU with shuffled block tables; returns (q, k_cache, v_cache, meta, attended_keys)."""
    seq_lens = decode_lens + [s for s, _ in prefills]
    q_lens = [1] * len(decode_lens) + [q for _, q in prefills]
    per_seq = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(per_seq)
    k_cache = torch.randn(num_blocks, block_size, hkv, head_dim, device="cuda", dtype=dtype)
    v_cache = torch.randn_like(k_cache)
    ids = torch.randperm(num_blocks, device="cuda").to(torch.int32)
    tables = torch.zeros(len(seq_lens), max(per_seq), dtype=torch.int32, device="cuda")
    offsets = torch.tensor([0] + per_seq).cumsum(0).tolist()
    for b, n in enumerate(per_seq):
        tables[b, :n] = ids[offsets[b] : offsets[b] + n]
    starts = torch.tensor([0] + q_lens).cumsum(0)
    meta = AttentionMetadata(starts.to(torch.int32).cuda(), torch.tensor(seq_lens, dtype=torch.int32).cuda(), tables,
                             len(decode_lens), max(q_lens), max(seq_lens), q_lens, seq_lens)
    q = torch.randn(int(starts[-1]), hq, head_dim, device="cuda", dtype=dtype)
    attended = sum(s - q + (i + 1) for s, q in zip(seq_lens, q_lens) for i in range(q))
    return q, k_cache, v_cache, meta, attended


def attention_case(name: str, decode_lens, prefills, args, triton_ops, dtype) -> Case:
    hq, hkv, d = args.q_heads, args.kv_heads, args.head_dim
    q, k_cache, v_cache, meta, attended = paged_batch(decode_lens, prefills, hq, hkv, d, args.block_size, dtype)
    scale = d**-0.5
    kv_bytes = 2 * sum(meta.seq_lens_host) * hkv * d * k_cache.element_size()
    return Case(name, lambda: triton_ops.paged_attention(q, k_cache, v_cache, meta, scale),
                lambda: torch_ops.paged_attention(q, k_cache, v_cache, meta, scale),
                kv_bytes + 2 * q.numel() * q.element_size(), 4.0 * attended * hq * d, 2e-2)


def elementwise_cases(args, triton_ops, dtype) -> list[Case]:
    t, h, d, inter = args.tokens, args.hidden, args.head_dim, args.intermediate
    hq, hkv, es = args.q_heads, args.kv_heads, torch.tensor([], dtype=dtype).element_size()
    x, res = torch.randn(t, h, device="cuda", dtype=dtype), torch.randn(t, h, device="cuda", dtype=dtype)
    w = torch.randn(h, device="cuda", dtype=dtype)
    gate_up = torch.randn(t, 2 * inter, device="cuda", dtype=dtype)
    key, value = torch.randn(t, hkv, d, device="cuda", dtype=dtype), torch.randn(t, hkv, d, device="cuda", dtype=dtype)
    num_blocks = -(-t // args.block_size)
    k_cache = torch.zeros(num_blocks, args.block_size, hkv, d, device="cuda", dtype=dtype)
    v_cache = torch.zeros_like(k_cache)
    slots = torch.randperm(num_blocks * args.block_size, device="cuda")[:t]
    inv_freq = 1.0 / (500000.0 ** (torch.arange(0, d, 2, device="cuda").float() / d))
    cache = build_cos_sin_cache(inv_freq, 8192, 1.0, dtype)
    positions = torch.randint(0, 8192, (t,), device="cuda")
    q, k = torch.randn(t, hq, d, device="cuda", dtype=dtype), torch.randn(t, hkv, d, device="cuda", dtype=dtype)

    def rope(ops):
        qc, kc = q.clone(), k.clone()
        ops.rotary_embedding(positions, qc, kc, cache, True)
        return torch.cat((qc.flatten(), kc.flatten()))

    def kv_write(ops):
        ops.write_kv_cache(key, value, k_cache, v_cache, slots)
        return torch.cat((k_cache.flatten(), v_cache.flatten()))

    return [
        Case("fused_add_rms_norm", lambda: triton_ops.fused_add_rms_norm(x, res, w, 1e-6)[0],
             lambda: torch_ops.fused_add_rms_norm(x, res, w, 1e-6)[0], 5 * t * h * es, 0, 2e-2),
        Case("silu_and_mul", lambda: triton_ops.silu_and_mul(gate_up), lambda: torch_ops.silu_and_mul(gate_up),
             3 * t * inter * es, 0, 2e-2),
        # The timed rope and kv-write calls include a clone / concat that both backends share.
        Case("rotary_embedding", lambda: rope(triton_ops), lambda: rope(torch_ops),
             2 * t * (hq + hkv) * d * es, 0, 2e-2),
        Case("write_kv_cache", lambda: kv_write(triton_ops), lambda: kv_write(torch_ops),
             4 * t * hkv * d * es, 0, 0.0),
    ]


def run_cuda_bench(args: argparse.Namespace, dtype: torch.dtype) -> bool:
    import triton.testing

    from tide.kernels import triton_ops

    ctx, n = args.decode_context, args.decode_batch
    cases = elementwise_cases(args, triton_ops, dtype) + [
        attention_case(f"decode {n}x{ctx}", [ctx - i for i in range(n)], [], args, triton_ops, dtype),
        attention_case(f"split-K decode 2x{8 * ctx}", [8 * ctx, 8 * ctx - 5], [], args, triton_ops, dtype),
        attention_case("prefill 4x512 on 512 prefix", [], [(1024, 512)] * 4, args, triton_ops, dtype),
        attention_case(f"mixed {n} decodes + 2x256 chunks", [ctx] * n, [(ctx + 256, 256)] * 2, args, triton_ops,
                       dtype),
    ]
    print(f"{torch.cuda.get_device_name()}: {dtype}, floor = max(bytes / {args.peak_gbps} GB/s, "
          f"FLOPs / {args.peak_tflops} TFLOP/s)")
    ok = True
    for case in cases:
        err, passed = _close(case.triton_fn(), case.twin_fn().float(), case.tolerance)
        ok &= passed
        t_triton = triton.testing.do_bench(case.triton_fn) * 1e-3
        t_twin = triton.testing.do_bench(case.twin_fn) * 1e-3
        floor = max(case.bytes_moved / (args.peak_gbps * 1e9), case.flops / (args.peak_tflops * 1e12))
        print(f"{case.name:>34}: triton {t_triton * 1e6:9.1f} us | twin {t_twin * 1e6:9.1f} us "
              f"(x{t_twin / t_triton:5.1f}) | floor {floor * 1e6:8.1f} us ({floor / t_triton:5.1%} of it) | "
              f"max err vs twin {err:.2e} {'ok' if passed else 'FAIL'}")
    return ok


def _close(got: torch.Tensor, want: torch.Tensor, tolerance: float) -> tuple[float, bool]:
    """Max abs difference of got from want, and whether it is within tolerance of want's scale (at least 1)."""
    err = (got.float() - want).abs().max().item()
    return err, err <= tolerance * max(1.0, want.abs().max().item())


def _decode_call(q, k_cache, v_cache, meta, splits, tile, warps) -> Callable[[], torch.Tensor]:
    """The decode kernel at one tile and warp count, writing into an output of its own."""
    from tide.kernels import triton_attention

    out = torch.empty_like(q)

    def call() -> torch.Tensor:
        triton_attention.decode_attention(q, k_cache, v_cache, out, meta.block_tables, meta.seq_lens,
                                          meta.max_seq_len, q.shape[-1] ** -0.5, splits, tile, warps)
        return out

    return call


def _prefill_call(q, k_cache, v_cache, meta, tile, warps) -> Callable[[], torch.Tensor]:
    """The prefill kernel at one tile and warp count, writing into an output of its own."""
    from tide.kernels import triton_attention

    out = torch.empty_like(q)

    def call() -> torch.Tensor:
        triton_attention.prefill_attention(q, k_cache, v_cache, out, meta, q.shape[-1] ** -0.5, tile, warps)
        return out

    return call


def _sweep_line(name: str, make_call: Callable[[int, int], Callable[[], torch.Tensor]], want: torch.Tensor,
                warp_counts: tuple[int, ...]) -> bool:
    """Times make_call(tile, warps) at each keys-per-iteration tile and warp count, checked against want; prints one
    line of microseconds per call."""
    import triton.testing

    ok, cells = True, []
    for tile in (16, 32, 64, 128):
        for warps in warp_counts:
            call = make_call(tile, warps)
            passed = _close(call(), want, 2e-2)[1]
            ok &= passed
            cells.append(f"{tile}x{warps}: {triton.testing.do_bench(call) * 1e3:7.1f}{'' if passed else ' FAIL'}")
    print(f"  {name:>28}: " + " | ".join(cells))
    return ok


def sweep_decode(args: argparse.Namespace, dtype: torch.dtype) -> bool:
    """The decode kernel at each keys-per-iteration tile and warp count, on the benchmark's two decode batches."""
    from tide.kernels import triton_attention

    ctx, n, d = args.decode_context, args.decode_batch, args.head_dim
    batches = {f"decode {n}x{ctx}": [ctx - i for i in range(n)], f"split-K decode 2x{8 * ctx}": [8 * ctx, 8 * ctx - 5]}
    print(f"decode tiles ({dtype}): us per call at tile_keys x num_warps")
    ok = True
    for name, lens in batches.items():
        q, k_cache, v_cache, meta, _ = paged_batch(lens, [], args.q_heads, args.kv_heads, d, args.block_size, dtype)
        splits = triton_attention.choose_num_splits(len(lens), args.kv_heads, -(-max(lens) // args.block_size),
                                                    q.device)
        want = torch_ops.paged_attention(q, k_cache, v_cache, meta, d**-0.5).float()
        ok &= _sweep_line(name, partial(_decode_call, q, k_cache, v_cache, meta, splits), want, (2, 4, 8))
    return ok


def sweep_prefill(args: argparse.Namespace, dtype: torch.dtype) -> bool:
    """The prefill kernel at each keys-per-iteration tile and warp count, on the benchmark's prefill batch."""
    d = args.head_dim
    q, k_cache, v_cache, meta, _ = paged_batch([], [(1024, 512)] * 4, args.q_heads, args.kv_heads, d,
                                               args.block_size, dtype)
    want = torch_ops.paged_attention(q, k_cache, v_cache, meta, d**-0.5).float()
    print(f"prefill tiles ({dtype}): us per call at tile_keys x num_warps")
    return _sweep_line("prefill 4x512 on 512 prefix", partial(_prefill_call, q, k_cache, v_cache, meta), want, (4, 8))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -P -m tide.benchmarks.kernels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=4096, help="rows for the per-token ops")
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--intermediate", type=int, default=14336)
    parser.add_argument("--decode-batch", type=int, default=64)
    parser.add_argument("--decode-context", type=int, default=2048)
    parser.add_argument("--dtypes", default="bfloat16,float16", help="comma list of the dtypes to check and time")
    parser.add_argument("--sweep-tiles", action="store_true",
                        help="also time the attention kernels at each keys-per-iteration tile and warp count")
    parser.add_argument("--peak-gbps", type=float, default=3350.0, help="memory bandwidth (H100 SXM: 3350)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 tensor FLOPs (H100 SXM: 989)")
    add_shape_args(parser)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to time for the Triton kernels (python -P -m tide.benchmarks.kernels_cpu "
              "compares the CPU's attention strategies)")
        return 0
    dtypes = [getattr(torch, name.strip()) for name in args.dtypes.split(",")]
    results = [run_cuda_bench(args, dtype) for dtype in dtypes]
    if args.sweep_tiles:
        results += [sweep(args, dtype) for dtype in dtypes for sweep in (sweep_decode, sweep_prefill)]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
