"""Where the weights live, measured back to back: one process vs a tensor-parallel group, resident vs offloaded.

    python -P -m tide.benchmarks.placement --compare tp       # 1 rank, then 2 ranks (tensor parallel)
    python -P -m tide.benchmarks.placement --compare offload  # all layers resident, then streamed under a cap

Both sides run the same seeded fixed workload with greedy decoding, in one process, one after the other; each
engine runs a short warm-up first. The tensor-parallel side needs heads that divide by the rank count: SmolLM2's
9 query / 3 KV heads do not split over 2, so `--compare tp` defaults to a random model of SmolLM2's shape with
8 query / 4 KV heads of 72 dims (K/V projections 288 wide instead of 192, otherwise the same; built in a
temporary directory).
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile

import torch

from tide.benchmarks.engine import RunResult, run_tide
from tide.benchmarks.workloads import Workload, build_workload
from tide.engine.llm import LLM
from tide.engine.loader import load_config, load_tokenizer, resolve_model
from tide.engine.models.cpu_linear import NativeLinear, PackedLinear

SPLITTABLE_SMOLLM2 = "random-smollm2-8-heads"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -P -m tide.benchmarks.placement", description=__doc__.split("\n\n")[0])
    p.add_argument("--compare", choices=["tp", "offload"], required=True)
    p.add_argument("--model", default=None, help=f"default: {SPLITTABLE_SMOLLM2} for tp, smollm2-135m for offload")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    p.add_argument("--tensor-parallel-size", type=int, default=2)
    p.add_argument("--resident-layers", type=int, default=4, help="offload cap, in decoder layers")
    p.add_argument("--threads", type=int, default=None, help="total torch threads (default: all cores); tensor-"
                   "parallel ranks split them")
    p.add_argument("--num-prompts", type=int, default=16)
    p.add_argument("--input-len", type=int, default=64)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    threads = args.threads or os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or (splittable_smollm2(tmp) if args.compare == "tp" else "smollm2-135m")
        workload = build_workload("fixed", load_tokenizer(resolve_model(model)), args.num_prompts, args.input_len,
                                  args.output_len, args.seed)
        name = args.model or (SPLITTABLE_SMOLLM2 if args.compare == "tp" else model)
        print(f"bench_placement: {args.compare}, model {name}, dtype {args.dtype}, {threads} threads;"
              f" workload {workload.describe()}")
        if args.compare == "tp":
            world = args.tensor_parallel_size
            base = measure(workload, "1 rank", model=model, dtype=args.dtype, num_threads=threads)
            other = measure(workload, f"{world} ranks", model=model, dtype=args.dtype, tensor_parallel_size=world,
                            num_threads=max(1, threads // world))
        else:
            base = measure(workload, "resident", model=model, dtype=args.dtype, num_threads=threads)
            other = measure(workload, f"offload {args.resident_layers}", model=model, dtype=args.dtype,
                            num_threads=threads, offload_max_resident_layers=args.resident_layers)
    same = sum(a == b for a, b in zip(base.token_ids, other.token_ids))
    print(f"  ratio {other.label} / {base.label}: output tokens/s {other.rates[2] / base.rates[2]:.2f}x; "
          f"identical outputs {same}/{len(base.token_ids)}")
    return 0


def measure(workload: Workload, label: str, **config) -> RunResult:
    """Build an engine, warm it up, run the workload, print its line (and its weight memory), close it."""
    llm = LLM(**config)
    try:
        run_tide(llm, Workload("warm-up", workload.prompts[:2], 4, ignore_eos=True))
        result = run_tide(llm, workload)
        result.label = label
        print(result.line() + "   " + weight_memory(llm))
        return result
    finally:
        llm.engine.close()
        del llm
        gc.collect()


def weight_memory(llm: LLM) -> str:
    """Bytes of decoder-layer weights this process holds: all of them, or the offloader's peak."""
    model = llm.engine.runner.model
    offloader = getattr(model, "offloader", None)
    if offloader is None:
        return f"layer weights resident: {layer_bytes(model.layers) / 2**20:.1f} MiB (this process)"
    total = sum(offloader.layer_bytes)
    return (f"layer weights resident: peak {offloader.peak_resident_bytes / 2**20:.1f} MiB of {total / 2**20:.1f} "
            f"MiB ({offloader.fetches} layer fetches)")


def layer_bytes(layers: torch.nn.Module) -> int:
    """Parameters plus the weights of packed linears, which are plain attributes (oneDNN tensors, or the native
    kernel's panels)."""
    total = sum(p.numel() * p.element_size() for p in layers.parameters())
    for module in layers.modules():
        if isinstance(module, NativeLinear):
            total += module.weight.numel() * module.weight.element_size()
        elif isinstance(module, PackedLinear):
            size = torch.empty((), dtype=module.compute_dtype).element_size()
            total += module.in_features * module.out_features * size
    return total


def splittable_smollm2(directory: str) -> str:
    """A seeded random model of SmolLM2-135M's shape but 8 query / 4 KV heads of 72 dims, with its tokenizer."""
    from transformers import AutoModelForCausalLM

    source = resolve_model("smollm2-135m")
    config = load_config(source)
    config.num_attention_heads, config.num_key_value_heads, config.head_dim = 8, 4, 72
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(directory)
    load_tokenizer(source).save_pretrained(directory)
    return directory


if __name__ == "__main__":
    sys.exit(main())
