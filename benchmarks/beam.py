"""Beam search benchmark: KV blocks held with forks sharing their parent's full blocks vs copying all of them, and
the time of beam search vs greedy decoding, back to back on one engine.

    python -P -m tide.benchmarks.beam [--model smollm2-135m] [--prompt-len 512] [--max-tokens 32] [--widths 4,8]
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import dataclass

from tide.benchmarks.workloads import random_token_prompts
from tide.engine.llm import LLM
from tide.engine.sampling_params import SamplingParams


@dataclass
class Run:
    peak_blocks: int
    seconds: float
    output_tokens: int


def measure(llm: LLM, prompts: list[list[int]], params: SamplingParams) -> Run:
    """Run the prompts to completion, sampling the blocks in use (refcount > 0) after every step."""
    engine = llm.engine
    bm = engine.block_manager
    for i, prompt in enumerate(prompts):
        engine.add_request(f"bench-{i}", prompt, params)
    peak, tokens, started = 0, 0, time.perf_counter()
    while engine.has_unfinished():
        for out in engine.step():
            tokens += sum(len(c.token_ids) for c in out.outputs)
        peak = max(peak, bm.num_blocks - bm.num_free_blocks)
    return Run(peak, time.perf_counter() - started, tokens)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -P -m tide.benchmarks.beam", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--prompts", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--widths", default="4,8")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    # No prefix cache: a run must not start with the previous run's prompt blocks already computed.
    llm = LLM(model=args.model, dtype=args.dtype, enable_prefix_caching=False)
    prompts = random_token_prompts(llm.tokenizer, args.prompts, args.prompt_len, random.Random(args.seed))
    print(f"{args.model}, {args.prompts} prompt(s) of {args.prompt_len} tokens, {args.max_tokens} new tokens (EOS "
          f"ignored), block size {llm.engine.config.block_size}")
    greedy_params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
    measure(llm, prompts, greedy_params)  # warm-up: first calls pay for kernel loading and packing
    greedy = measure(llm, prompts, greedy_params)
    print(f"greedy: peak {greedy.peak_blocks} blocks, {greedy.seconds:.2f} s")
    print("| beams | peak KV blocks shared | peak KV blocks copied | copied / shared | beam s | greedy s | "
          "beam / greedy time |\n|---|---|---|---|---|---|---|")
    for width in (int(w) for w in args.widths.split(",")):
        params = SamplingParams(use_beam_search=True, best_of=width, max_tokens=args.max_tokens, ignore_eos=True)
        shared = measure(llm, prompts, params)
        llm.engine.beam_search.share_blocks = False
        copied = measure(llm, prompts, params)
        llm.engine.beam_search.share_blocks = True
        print(f"| {width} | {shared.peak_blocks} | {copied.peak_blocks} | "
              f"{copied.peak_blocks / shared.peak_blocks:.2f} | {shared.seconds:.2f} | {greedy.seconds:.2f} | "
              f"{shared.seconds / greedy.seconds:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
