"""`tide tune`: find this machine's best engine settings for a model.

It sweeps `max_num_seqs` (how many sequences decode together) at the default token budget, then the token budget
(`max_num_batched_tokens`) at the chosen concurrency, each point a fresh engine running the same seeded chat-like
workload as an offline batch (twice as many requests as sequences, so the batch stays full). It prints every point's
output tokens/s, TPOT and TTFT with the throughput/TPOT frontier marked, picks the highest concurrency whose TPOT
p90 stays under `--slo-tpot-ms` (the highest throughput without an SLO), and writes the choice where workers pick
it up (`tide/tuned_defaults.py`).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from tide.options import UsageError
from tide.settings import Settings
from tide.tuned_defaults import tuned_path

DEFAULT_SEQS = "1,4,16,64"
DEFAULT_BUDGETS = "256,512,2048"


@dataclass
class Point:
    max_num_seqs: int
    max_num_batched_tokens: int
    requests: int
    output_tokens_per_s: float
    tpot_p50_ms: float
    tpot_p90_ms: float
    ttft_p50_ms: float
    wall_s: float
    frontier: bool = False


def add_parser(sub, settings: Settings) -> None:
    p = sub.add_parser("tune", help="sweep max_num_seqs and the token budget; print the frontier, save the best")
    p.add_argument("--model", default=settings.model, help="model alias, HF directory or GGUF file")
    p.add_argument("--slo-tpot-ms", type=float, default=None,
                   help="TPOT p90 limit: pick the highest concurrency that stays under it")
    p.add_argument("--seqs", default=DEFAULT_SEQS, help=f"max_num_seqs values to try (default {DEFAULT_SEQS})")
    p.add_argument("--budgets", default=DEFAULT_BUDGETS,
                   help=f"token budgets to try at the chosen concurrency (default {DEFAULT_BUDGETS})")
    p.add_argument("--max-tokens", type=int, default=48, help="output tokens per request")
    p.add_argument("--dtype", default=settings.dtype, choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, default=settings.threads, help="torch compute threads")
    p.add_argument("--kv-cache-bytes", type=int, default=settings.kv_cache_bytes)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="where to write the choice (default: where workers look)")
    p.add_argument("--no-save", action="store_true", help="print only")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=lambda args: cmd_tune(args, settings))


def cmd_tune(args: argparse.Namespace, settings: Settings) -> int:
    seqs, budgets = _ints(args.seqs, "--seqs"), _ints(args.budgets, "--budgets")
    bar = _bar(len(seqs) + len(budgets), args.no_progress)
    points = [_measure(args, n, None, bar) for n in seqs]
    chosen = _choose(points, args.slo_tpot_ms)
    points += [_measure(args, chosen.max_num_seqs, b, bar) for b in budgets
               if b != chosen.max_num_batched_tokens]
    bar.close()
    best = _choose([p for p in points if p.max_num_seqs == chosen.max_num_seqs], args.slo_tpot_ms, by_throughput=True)
    _mark_frontier(points)
    print(_table(points, best))
    under = [p for p in points if args.slo_tpot_ms is not None and p.tpot_p90_ms <= args.slo_tpot_ms]
    if args.slo_tpot_ms is not None:
        print(f"highest concurrency with TPOT p90 <= {args.slo_tpot_ms:g} ms: "
              + (f"max_num_seqs={max(p.max_num_seqs for p in under)}" if under else "none (even 1 is slower)"))
    print(f"best: max_num_seqs={best.max_num_seqs} max_num_batched_tokens={best.max_num_batched_tokens} "
          f"({best.output_tokens_per_s:.1f} output tokens/s, TPOT p90 {best.tpot_p90_ms:.1f} ms)")
    if not args.no_save:
        path = args.output or str(tuned_path(args.model, settings.cache_dir))
        _save(path, args, best, points)
        print(f"saved {path} (tide worker and tide run use it for {args.model} unless given these settings)")
    return 0


def _measure(args: argparse.Namespace, max_num_seqs: int, budget: int | None, bar) -> Point:
    from tide.benchmarks.workloads import chat_prompt
    from tide.engine import EngineConfig, LLMEngine, SamplingParams

    options = {k: v for k, v in {"max_num_batched_tokens": budget, "num_threads": args.threads,
                                 "kv_cache_bytes": args.kv_cache_bytes}.items() if v is not None}
    try:
        engine = LLMEngine(EngineConfig(model=args.model, dtype=args.dtype, max_num_seqs=max_num_seqs, seed=args.seed,
                                        **options))
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(f"cannot load model {args.model!r}: {exc}") from exc
    rng = random.Random(args.seed)
    requests = max(2 * max_num_seqs, 8)
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
    for i in range(requests):
        engine.add_request(f"tune-{i}", chat_prompt(engine.tokenizer, rng), params)
    started, outputs = time.monotonic(), []
    while engine.has_unfinished():
        outputs += engine.step()
    wall = time.monotonic() - started
    tokens = sum(o.metrics.completion_tokens for o in outputs)
    tpot = np.array([o.metrics.tpot for o in outputs if o.metrics.tpot is not None]) * 1000
    ttft = np.array([o.metrics.ttft for o in outputs if o.metrics.ttft is not None]) * 1000
    point = Point(max_num_seqs, engine.config.max_num_batched_tokens, requests, tokens / wall,
                  float(np.percentile(tpot, 50)) if tpot.size else 0.0,
                  float(np.percentile(tpot, 90)) if tpot.size else 0.0,
                  float(np.percentile(ttft, 50)) if ttft.size else 0.0, wall)
    bar.set_postfix_str(f"seqs={max_num_seqs} budget={point.max_num_batched_tokens}: "
                        f"{point.output_tokens_per_s:.0f} tok/s, TPOT p90 {point.tpot_p90_ms:.0f} ms")
    bar.update(1)
    return point


def _choose(points: list[Point], slo_ms: float | None, by_throughput: bool = False) -> Point:
    """The highest concurrency under the SLO (or, `by_throughput`, the fastest point under it); the fastest point
    when there is no SLO or nothing meets it."""
    fastest = max(points, key=lambda p: p.output_tokens_per_s)
    if slo_ms is None:
        return fastest
    under = [p for p in points if p.tpot_p90_ms <= slo_ms]
    if not under:
        return min(points, key=lambda p: p.tpot_p90_ms)
    key = (lambda p: p.output_tokens_per_s) if by_throughput else (lambda p: (p.max_num_seqs, p.output_tokens_per_s))
    return max(under, key=key)


def _mark_frontier(points: list[Point]) -> None:
    """A point is on the frontier when no other is both faster and has a lower TPOT p90."""
    for p in points:
        p.frontier = not any(q.output_tokens_per_s > p.output_tokens_per_s and q.tpot_p90_ms < p.tpot_p90_ms
                             for q in points)


def _table(points: list[Point], best: Point) -> str:
    lines = ["max_num_seqs  token_budget  output tok/s  TPOT p50 ms  TPOT p90 ms  TTFT p50 ms  frontier",
             "-" * 86]
    for p in sorted(points, key=lambda p: (p.max_num_seqs, p.max_num_batched_tokens)):
        lines.append(f"{p.max_num_seqs:>12}  {p.max_num_batched_tokens:>12}  {p.output_tokens_per_s:>11.1f}  "
                     f"{p.tpot_p50_ms:>11.1f}  {p.tpot_p90_ms:>11.1f}  {p.ttft_p50_ms:>11.1f}  "
                     f"{'*' if p.frontier else ' ':>8}{'  <- best' if p is best else ''}")
    return "\n".join(lines)


def _save(path: str, args: argparse.Namespace, best: Point, points: list[Point]) -> None:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
    record = {"model": args.model, "engine": {"max_num_seqs": best.max_num_seqs,
                                              "max_num_batched_tokens": best.max_num_batched_tokens},
              "slo_tpot_ms": args.slo_tpot_ms, "dtype": args.dtype, "threads": args.threads,
              "machine": {"host": platform.node(), "device": device, "cpus": os.cpu_count()},
              "tuned_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "points": [asdict(p) for p in points]}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=2)


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise UsageError(f"{flag} wants comma-separated integers, got {text!r}") from None
    if not values or values[0] < 1:
        raise UsageError(f"{flag} wants positive integers, got {text!r}")
    return values


def _bar(total: int, disabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="tide tune", unit="point", file=sys.stderr, disable=disabled)
