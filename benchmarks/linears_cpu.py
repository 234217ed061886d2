"""`python -P -m tide.benchmarks.linears_cpu`: the CPU path's linears, Tide's native kernel against oneDNN.

Times SmolLM2-135M's four decoder projections (qkv, o, gate_up, down) and its LM head at a few row counts, both
kernels on the same random weights, in GFLOP/s. An engine step reads every layer's weights in turn, so each
layer's weights come from DRAM; a call repeated on one weight would find it in cache. Each shape therefore gets
`--layers` distinct weights (30, as the model), called in turn like the layers of a step; `--layers 1` shows the
in-cache rate. The two kernels alternate per round, so drift on a shared machine hits both alike.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from tide.kernels import native, native_linear

# SmolLM2-135M: (out_features, in_features) of each projection.
SHAPES = {"qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536), "lm_head": (49152, 576)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -P -m tide.benchmarks.linears_cpu", description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[16, 64, 1000], help="rows per call (tokens of a step)")
    p.add_argument("--layers", type=int, default=30, help="distinct weights per shape, called in turn")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="default: torch's thread count")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    library = native.load()
    dtype = getattr(torch, args.dtype)
    if not native_linear.serves(library, dtype, 576):
        print(f"the native {args.dtype} linear does not run here ({native.status()})", file=sys.stderr)
        return 1
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or threads)
    try:
        _run(args, library, dtype)
    finally:
        torch.set_num_threads(threads)
    return 0


def _run(args: argparse.Namespace, library: native.NativeLibrary, dtype: torch.dtype) -> None:
    print(f"{native.status()}; {args.dtype}, {torch.get_num_threads()} threads, {args.layers} weights per shape")
    kernels = _kernels(library, args.layers, dtype)
    for rows in args.rows:
        inputs = {name: torch.randn(rows, k, dtype=dtype) for name, (_, k) in SHAPES.items()}
        for _ in range(args.rounds):
            for label, calls in kernels.items():
                rates = {name: _rate(calls[name], inputs[name]) for name in SHAPES}
                print(f"{rows:>5} rows {label:>7}: " + "  ".join(f"{name} {rate:4.0f}" for name, rate in rates.items())
                      + " GFLOP/s")


def _kernels(library: native.NativeLibrary, layers: int, dtype: torch.dtype) -> dict[str, dict[str, list]]:
    """Per kernel and shape, one call per distinct weight."""
    out: dict[str, dict[str, list]] = {"native": {}, "onednn": {}}
    for name, (n, k) in SHAPES.items():
        weights = [torch.randn(n, k, dtype=dtype) for _ in range(layers if name != "lm_head" else 1)]
        out["native"][name] = [_native_call(native_linear.pack_weight(w, library), n, library) for w in weights]
        out["onednn"][name] = [_onednn_call(torch.ops.mkldnn._reorder_linear_weight(w, 128)) for w in weights]
    return out


def _native_call(packed: torch.Tensor, n: int, library: native.NativeLibrary):
    return lambda x: native_linear.linear(x, packed, n, None, library)


def _onednn_call(packed: torch.Tensor):
    return lambda x: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")


def _rate(calls: list, x: torch.Tensor, min_seconds: float = 0.2) -> float:
    """GFLOP/s over whole passes through the weights (at least three, and `min_seconds`), after one untimed pass."""
    for call in calls:
        call(x)
    passes, started = 0, time.perf_counter()
    while passes < 3 or time.perf_counter() - started < min_seconds:
        for call in calls:
            call(x)
        passes += 1
    seconds = time.perf_counter() - started
    return 2.0 * x.shape[0] * x.shape[1] * calls[0](x).shape[1] * passes * len(calls) / seconds / 1e9


if __name__ == "__main__":
    sys.exit(main())
