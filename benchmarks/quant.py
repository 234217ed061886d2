"""`python -P -m tide.benchmarks.quant`: int8 weight-only against fp32 and bf16 on one model, side by side in one run.

Figures: weight bytes and RSS after load (each configuration loaded in a fresh subprocess, so RSS is its own), decode
throughput on a fixed workload (engines loaded together, timed back to back, best of `--repeats`), the decoder
projections' time per pass at decode-sized row counts, and quality: greedy token agreement and logprob drift against the
float reference at the same dtype, teacher-forced (every position is scored on the reference's own prefix, so one early
divergence does not spoil the rest).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

from tide.engine.llm import LLM
from tide.engine.sampling_params import SamplingParams

CONFIGS = {"fp32": ("float32", "none"), "bf16": ("bfloat16", "none"),
           "int8 (fp32 rest)": ("float32", "int8"), "int8 (bf16 rest)": ("bfloat16", "int8")}
REFERENCE = {"int8 (fp32 rest)": "fp32", "int8 (bf16 rest)": "bf16"}
QUALITY_CHATS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers and explain why each one is prime.",
    "Explain in two sentences what a paged KV cache is and why an inference engine would use one.",
    "Translate to French: The weather is lovely today, and we are going to walk along the river after lunch.",
    "Give me a short recipe for pancakes, with the ingredients and numbered steps.",
]


@dataclass
class Agreement:
    """How often the test model's greedy choice equals the reference's, on the reference's own continuation."""

    positions: int
    token_agreement: float
    mean_drift: float  # mean |logprob_test(ref token) - logprob_ref(ref token)|
    max_drift: float

    def __str__(self) -> str:
        return (f"{self.token_agreement:.1%} of {self.positions} greedy tokens agree; logprob drift mean "
                f"{self.mean_drift:.4f}, max {self.max_drift:.4f}")


def agreement(reference: LLM, test: LLM, prompts: list, max_new: int, top: int = 20) -> Agreement:
    """Teacher-forced greedy agreement of `test` with `reference` on `prompts` (chat messages or text).

    The reference decodes greedily; then `test` predicts one token at every prefix of that continuation (one wave
    per position, so each wave reuses the previous one's cached prefix). A reference token outside the test's top
    `top` counts with the top-`top` floor as its logprob (an underestimate of the drift).
    """
    refs = reference.generate(prompts, SamplingParams(temperature=0.0, max_tokens=max_new, logprobs=0))
    matched, drifts = 0, []
    for i in range(max(len(r.token_ids) for r in refs)):
        live = [r for r in refs if i < len(r.token_ids)]
        outs = test.generate([r.prompt_token_ids + r.token_ids[:i] for r in live],
                             SamplingParams(temperature=0.0, max_tokens=1, logprobs=top))
        for ref, out in zip(live, outs):
            want, step = ref.token_ids[i], out.outputs[0].logprobs[0]
            matched += step.token_id == want
            test_logprob = dict(step.top).get(want, step.top[-1][1])
            drifts.append(abs(test_logprob - ref.outputs[0].logprobs[i].logprob))
    return Agreement(len(drifts), matched / len(drifts), sum(drifts) / len(drifts), max(drifts))


def decode_throughput(llm: LLM, prompts: list[list[int]], max_tokens: int) -> float:
    """Output tokens/s of one greedy batch that generates exactly `max_tokens` per prompt."""
    start = time.perf_counter()
    outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True))
    return sum(len(o.token_ids) for o in outs) / (time.perf_counter() - start)


@torch.inference_mode()
def linear_pass_ms(llm: LLM, tokens: int, repeats: int = 5) -> float:
    """Best time (ms) to run every decoder projection of the model once on `tokens` rows: all layers in turn, so
    the weights stream from memory as in a real step instead of staying in cache."""
    model = llm.engine.runner.model
    linears = [m for layer in model.layers for m in (layer.self_attn.qkv_proj, layer.self_attn.o_proj,
                                                      layer.mlp.gate_up_proj, layer.mlp.down_proj)]
    dtype = model.embed_tokens.weight.dtype
    inputs = {n: torch.randn(tokens, n).to(dtype) for n in {m.in_features for m in linears}}
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for m in linears:
            m(inputs[m.in_features])
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def weight_bytes(llm: LLM) -> dict[str, int]:
    """Weight bytes held by the model: the decoder layers (where int8 applies) and the rest.

    Counts parameters and the packed copies PackedLinear keeps as plain tensors (on a CPU without oneDNN bf16 a
    bf16 model's packed weights are fp32), each tensor once.
    """
    def held(root: torch.nn.Module) -> int:
        seen: dict[int, int] = {}
        for module in root.modules():
            tensors = [*module.parameters(recurse=False),
                       *(v for v in vars(module).values() if isinstance(v, torch.Tensor))]
            seen.update((id(t), t.numel() * t.element_size()) for t in tensors)
        return sum(seen.values())

    model = llm.engine.runner.model
    layers = held(model.layers)
    return {"layers": layers, "other": held(model) - layers}


def memory_probe(model: str, dtype: str, quantization: str) -> dict:
    """Load one configuration in this process and report its weight bytes and RSS (run in a subprocess)."""
    llm = LLM(model=model, dtype=dtype, quantization=quantization, kv_cache_bytes=2**24, num_threads=1)
    with open("/proc/self/status") as f:
        rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {**weight_bytes(llm), "rss": rss, "peak_rss": peak}


def memory_figures(model: str, configs: dict[str, tuple[str, str]] = CONFIGS) -> dict[str, dict]:
    """`memory_probe` of each configuration, each in a fresh subprocess so that its RSS is its own."""
    figures = {}
    for name, (dtype, quantization) in configs.items():
        code = (f"import json; from tide.benchmarks.quant import memory_probe; "
                f"print(json.dumps(memory_probe({model!r}, {dtype!r}, {quantization!r})))")
        out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, check=True).stdout
        figures[name] = json.loads(out.strip().splitlines()[-1])
    return figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -P -m tide.benchmarks.quant", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--prompts", type=int, default=16, help="decode batch size")
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quality-tokens", type=int, default=24)
    p.add_argument("--memory", choices=["run", "skip", "only"], default="run", help="the memory figures")
    args = p.parse_args(argv)

    if args.memory != "skip":
        for name, fig in memory_figures(args.model).items():
            print(f"memory {name:17s} weights: layers {fig['layers'] / 2**20:7.1f} MiB + other "
                  f"{fig['other'] / 2**20:6.1f} MiB; RSS after load {fig['rss'] / 2**20:7.1f} MiB, "
                  f"peak {fig['peak_rss'] / 2**20:7.1f} MiB", flush=True)
    if args.memory == "only":
        return 0
    engines = {name: LLM(model=args.model, dtype=dtype, quantization=q, num_threads=args.threads)
               for name, (dtype, q) in CONFIGS.items()}
    gen = torch.Generator().manual_seed(0)
    vocab = engines["fp32"].engine.vocab_size
    prompts = [torch.randint(100, vocab, (args.prompt_tokens,), generator=gen).tolist() for _ in range(args.prompts)]
    best = {name: 0.0 for name in engines}
    for _ in range(args.repeats):  # interleaved, so a noisy neighbour hits every configuration alike
        for name, llm in engines.items():
            best[name] = max(best[name], decode_throughput(llm, prompts, args.max_tokens))
    print(f"decode: {args.prompts} prompts x {args.prompt_tokens} tokens, {args.max_tokens} new tokens each, greedy, "
          f"best of {args.repeats}")
    for name, rate in best.items():
        ref = REFERENCE.get(name)
        ratio = f" ({rate / best[ref]:.2f}x {ref})" if ref else ""
        print(f"  {name:17s} {rate:8.1f} out tok/s{ratio}")
    print("decoder projections, one pass over all layers (ms, best of 5; ratio to the same dtype without int8):")
    for tokens in (1, 8, 32, 64, 128):
        times = {name: linear_pass_ms(llm, tokens) for name, llm in engines.items()}
        print(f"  {tokens:4d} rows: " + ", ".join(
            f"{name} {t:7.2f}" + (f" ({t / times[REFERENCE[name]]:.2f}x)" if name in REFERENCE else "")
            for name, t in times.items()))
    chats = [[{"role": "user", "content": c}] for c in QUALITY_CHATS]
    for name, ref in REFERENCE.items():
        print(f"quality {name} vs {ref}: {agreement(engines[ref], engines[name], chats, args.quality_tokens)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
