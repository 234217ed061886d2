"""Speculative decoding against plain decoding on an input-grounded workload, back to back in one process.

`python -P -m tide.benchmarks.speculative` asks SmolLM2 to extract, quote or list items from notes in its prompt, where
prompt lookup finds what the model will write next. For each batch size, an engine with speculation and one without run
the same greedy requests in turn (best of `--repeats` each); the run prints output tokens/s of both, the speed-up, the
acceptance rate, and how many outputs are identical (all of them, unless fp rounding flips a near tie).
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time

from tide.benchmarks.workloads import grounded_prompts
from tide.engine.llm import LLM
from tide.engine.sampling_params import SamplingParams


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -P -m tide.benchmarks.speculative", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    p.add_argument("--speculative", default="ngram", choices=["ngram", "draft"])
    p.add_argument("--draft-model", default=None, help="for --speculative draft")
    p.add_argument("--num-speculative-tokens", type=int, default=4)
    p.add_argument("--batch-sizes", default="1,16", help="comma list: sequences running at once")
    p.add_argument("--num-prompts", type=int, default=16, help="requests per batch size")
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--repeats", type=int, default=2, help="timed runs per side; the best counts")
    p.add_argument("--no-auto-off", action="store_true", help="speculate at any batch size (to measure the "
                   "threshold)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    threads = args.threads or os.cpu_count() or 1
    print(f"bench_spec: model {args.model}, {args.speculative} k={args.num_speculative_tokens}, dtype {args.dtype}, "
          f"{threads} threads, {args.num_prompts} prompts x {args.max_tokens} new tokens (greedy)")
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        plain = _llm(args, threads, batch, speculative="off")
        spec = _llm(args, threads, batch, speculative=args.speculative, draft_model=args.draft_model,
                    num_speculative_tokens=args.num_speculative_tokens,
                    **({"spec_max_running": batch} if args.no_auto_off else {}))
        prompts = grounded_prompts(plain.tokenizer, args.num_prompts, args.seed)
        params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
        runs: dict[str, list[float]] = {"off": [], "on": []}
        for _ in range(args.repeats):  # alternate, so that load from other processes hits both sides alike
            for name, llm in (("off", plain), ("on", spec)):
                seconds, outputs = _timed(llm, prompts, params)
                runs[name].append(seconds)
                tokens = sum(len(o.token_ids) for o in outputs)
                if name == "off":
                    reference = outputs
        same = sum(a.token_ids == b.token_ids for a, b in zip(reference, outputs))
        stats = spec.engine.stats
        off, on = tokens / min(runs["off"]), tokens / min(runs["on"])
        print(f"batch {batch:>3}: off {off:7.1f} tok/s, on {on:7.1f} tok/s, speed-up {on / off:.2f}x, acceptance "
              f"{stats.spec_acceptance_rate:.1%} ({stats.spec_accepted_tokens}/{stats.spec_proposed_tokens}), "
              f"engine steps {plain.engine.stats.num_steps / max(stats.num_steps, 1):.2f}x fewer, "
              f"identical outputs {same}/{len(prompts)}")
        del plain, spec
        gc.collect()
    return 0


def _llm(args: argparse.Namespace, threads: int, batch: int, **spec) -> LLM:
    return LLM(model=args.model, dtype=args.dtype, num_threads=threads, max_num_seqs=batch, seed=args.seed, **spec)


def _timed(llm: LLM, prompts: list[list[int]], params: SamplingParams):
    started = time.perf_counter()
    outputs = llm.generate(prompts, params)
    return time.perf_counter() - started, outputs


if __name__ == "__main__":
    sys.exit(main())
