"""`python -P -m tide.benchmarks.lora`: one batch spread over 8 LoRA adapters vs the same batch on the base model.

Three sides run back to back on one engine (prefix cache off, so no side reuses another's prompts), alternating, best
time of each counted:
- base model: the whole batch with no adapter;
- N adapters: the whole batch, row i under adapter i % N, all in the same steps;
- merged, one adapter at a time: what serving each adapter merged into its own copy of the weights costs, each
  adapter's rows as a batch of their own, one after another. A merged model has the base model's shapes, so its
  speed is the base model's: these batches run on the base weights (the packed CPU linears cannot be merged into in
  place, and N model copies would measure memory, not the batching).
The adapters are random, written in PEFT's format to a temporary directory, rank and target modules as asked.
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from tide.benchmarks.workloads import random_token_prompts
from tide.engine.llm import LLM
from tide.engine.loader import load_config, resolve_model
from tide.engine.sampling_params import SamplingParams

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def module_shapes(hf_config) -> dict[str, tuple[str, int, int]]:
    """PEFT module name -> (parent, in_features, out_features) in a Llama-family model."""
    hidden, inter = hf_config.hidden_size, hf_config.intermediate_size
    head_dim = getattr(hf_config, "head_dim", None) or hidden // hf_config.num_attention_heads
    q, kv = hf_config.num_attention_heads * head_dim, hf_config.num_key_value_heads * head_dim
    return {"q_proj": ("self_attn", hidden, q), "k_proj": ("self_attn", hidden, kv),
            "v_proj": ("self_attn", hidden, kv), "o_proj": ("self_attn", q, hidden),
            "gate_proj": ("mlp", hidden, inter), "up_proj": ("mlp", hidden, inter), "down_proj": ("mlp", inter, hidden)}


def write_random_adapter(directory: Path, hf_config, rank: int, targets: list[str], seed: int) -> Path:
    """A PEFT adapter directory with small random A and B for every layer's `targets`."""
    generator = torch.Generator().manual_seed(seed)
    shapes, tensors = module_shapes(hf_config), {}
    for layer in range(hf_config.num_hidden_layers):
        for name in targets:
            parent, fan_in, fan_out = shapes[name]
            prefix = f"base_model.model.model.layers.{layer}.{parent}.{name}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, fan_in, generator=generator) * 0.02
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(fan_out, rank, generator=generator) * 0.02
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    (directory / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": rank, "lora_alpha": rank, "target_modules": targets}))
    return directory


def run(llm: LLM, prompts: list[list[int]], adapters: list[str | None], max_tokens: int) -> tuple[float, int]:
    """(seconds, generated tokens) for the batch, row i under adapters[i % len(adapters)]."""
    params = [SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True,
                             lora=adapters[i % len(adapters)]) for i in range(len(prompts))]
    started = time.perf_counter()
    outputs = llm.generate(prompts, params)
    return time.perf_counter() - started, sum(len(o.outputs[0].token_ids) for o in outputs)


def run_one_at_a_time(llm: LLM, prompts: list[list[int]], groups: int, max_tokens: int) -> tuple[float, int]:
    """(seconds, generated tokens) for the batch split into `groups` batches (row i in batch i % groups), run one
    after another on the base weights."""
    seconds = tokens = 0
    for group in range(groups):
        s, t = run(llm, prompts[group::groups], [None], max_tokens)
        seconds, tokens = seconds + s, tokens + t
    return seconds, tokens


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -P -m tide.benchmarks.lora", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m", help="alias, HF directory or GGUF file (default smollm2-135m)")
    p.add_argument("--adapters", type=int, default=8)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--targets", default="all", help="'all' (the seven projections) or a comma list, e.g. q_proj,v_proj")
    p.add_argument("--prompts", type=int, default=64, help="rows in the batch (default 64)")
    p.add_argument("--input-len", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: one per core)")
    p.add_argument("--repeats", type=int, default=3, help="alternate the two sides this many times; best time counts")
    args = p.parse_args(argv)
    targets = ALL_LINEAR if args.targets == "all" else args.targets.split(",")
    model_dir = resolve_model(args.model)
    hf_config = load_config(model_dir)
    with tempfile.TemporaryDirectory(prefix="tide-lora-bench-") as tmp:
        names = {f"bench-{i}": str(write_random_adapter(Path(tmp) / f"a{i}", hf_config, args.rank, targets, i))
                 for i in range(args.adapters)}
        llm = LLM(str(model_dir), dtype=args.dtype, lora_adapters=names, max_loras=args.adapters,
                  max_lora_rank=args.rank, max_num_seqs=max(args.prompts, 1), enable_prefix_caching=False,
                  num_threads=args.threads)
        tokenizer = llm.tokenizer
        prompts = random_token_prompts(tokenizer, args.prompts, args.input_len, random.Random(0))
        lora_label, merged_label = f"{args.adapters} adapters", "merged, one adapter at a time"
        sides = {"base model": lambda: run(llm, prompts, [None], args.max_tokens),
                 lora_label: lambda: run(llm, prompts, list(names), args.max_tokens),
                 merged_label: lambda: run_one_at_a_time(llm, prompts, args.adapters, args.max_tokens)}
        run(llm, prompts[:args.adapters], list(names), 4)  # warm-up: every adapter resident, kernels built
        run(llm, prompts[:args.adapters], [None], 4)
        best: dict[str, tuple[float, int]] = {}
        for _ in range(args.repeats):
            for label, side in sides.items():
                seconds, tokens = side()
                if label not in best or seconds < best[label][0]:
                    best[label] = (seconds, tokens)
    dtype = str(llm.engine.runner.kv_cache.dtype).removeprefix("torch.")
    print(f"{args.prompts} rows of {args.input_len} prompt tokens, {args.max_tokens} new tokens each, greedy, {dtype}; "
          f"rank-{args.rank} adapters on {', '.join(targets)}; best of {args.repeats}")
    rates = {}
    for label, (seconds, tokens) in best.items():
        rates[label] = tokens / seconds
        print(f"  {label:<30} {seconds:7.2f} s  {rates[label]:8.1f} output tok/s")
    lora = rates[lora_label]
    print(f"  {lora_label} vs base model: {lora / rates['base model']:.2f}x (goal >= 0.8x)")
    print(f"  {lora_label} vs {merged_label}: {lora / rates[merged_label]:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
