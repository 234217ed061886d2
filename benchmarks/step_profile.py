"""`python -P -m tide.benchmarks.step_profile`: where the engine's wall time goes, per op and per step phase.

Runs one seeded `tide bench` workload through the engine with a timer around every op a step calls (each linear
layer by kind, the native ops, paged attention split into decode-only and mixed steps, the logits) and around every
phase of the step (scheduling, metadata, forward, logits, sampling, postprocessing), then prints each as a share of
the run's wall time (`--clock cpu`: the engine thread's CPU time, for one-thread runs on a busy machine, where wall
time mostly measures the other processes). What the timers do not cover is printed as its own line, so the table accounts for the whole
run. `--torch-trace PATH` also wraps each timed call in `torch.profiler.record_function` and writes a Chrome trace.

CPU ops are synchronous, so a timer around a call measures that call; each timer costs about a microsecond (a few
hundred per step), which the run's figures include.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
from collections import defaultdict

import torch

from tide.benchmarks.engine import _make_llm, _wait_for_kv_pages, run_tide
from tide.benchmarks.workloads import build_workload
from tide.engine.llm import LLM
from tide.engine.models.llama import GatedProjection

_LINEARS = {"qkv_proj": "linear qkv", "o_proj": "linear o", "gate_up_proj": "linear gate_up",
            "down_proj": "linear down"}
_OPS = ("rotary_write_kv_cache", "write_kv_cache", "fused_add_rms_norm", "rms_norm", "rotary_embedding",
        "silu_and_mul")


class Timers:
    """Seconds and calls per name; `wrap` returns a timed stand-in for a callable."""

    def __init__(self, trace: bool, clock=time.perf_counter) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.trace = trace
        self.clock = clock

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] += seconds
        self.calls[name] += 1

    def wrap(self, name, fn):
        """`name` is a string or a function of the call's arguments that returns one."""
        record = torch.profiler.record_function if self.trace else (lambda _: contextlib.nullcontext())

        def timed(*args, **kwargs):
            label = name if isinstance(name, str) else name(*args, **kwargs)
            started = self.clock()
            with record(label):
                out = fn(*args, **kwargs)
            self.add(label, self.clock() - started)
            return out

        return timed


def _attention_label(q, k_cache, v_cache, meta, scale, *args, **kwargs) -> str:
    return "attention decode-only" if meta.num_decodes == meta.num_seqs else "attention with prefill"


def install(llm: LLM, timers: Timers) -> None:
    """Replace the engine's ops, layers and step phases by timed stand-ins (this engine only)."""
    engine = llm.engine
    runner = engine.runner
    model = runner.model
    model.native_layers = None  # each op timed on its own: the layers run as modules (engine/models/native_layers.py)
    ops = model.ops
    timed_ops = dataclasses.replace(
        ops, paged_attention=timers.wrap(_attention_label, ops.paged_attention),
        **{name: timers.wrap(name.replace("_", " "), getattr(ops, name)) for name in _OPS})
    for module in model.modules():
        if hasattr(module, "ops"):
            module.ops = timed_ops
        for child_name, child in module.named_children():
            if child_name in _LINEARS:
                child.forward = timers.wrap(_LINEARS[child_name], child.forward)
                if isinstance(child, GatedProjection):  # the gate/up product with SiLU in its tiles
                    child.silu_and_mul = timers.wrap(f"{_LINEARS[child_name]} + silu", child.silu_and_mul)
    model.embed_tokens.forward = timers.wrap("embedding", model.embed_tokens.forward)
    model.compute_logits = timers.wrap("lm_head", model.compute_logits)
    # phases of a step, each including the ops above that run inside it
    model.forward = timers.wrap("phase: forward", model.forward)
    runner._prepare = timers.wrap("phase: step metadata", runner._prepare)
    runner.forward = timers.wrap("phase: runner total", runner.forward)
    engine.scheduler.schedule = timers.wrap("phase: schedule", engine.scheduler.schedule)
    engine.sampler = timers.wrap("phase: sample", engine.sampler)
    engine._postprocess = timers.wrap("phase: postprocess", engine._postprocess)
    engine.step = timers.wrap("phase: step total", engine.step)


def report(timers: Timers, total: float) -> list[str]:
    """Lines of the table: ops inside the forward, then the phases, each as a share of `total` (the whole run, on
    the same clock)."""
    s, calls = timers.seconds, timers.calls
    op_names = sorted((n for n in s if not n.startswith("phase:")), key=lambda n: -s[n])
    in_forward = sum(s[n] for n in op_names if n != "lm_head")
    rows = [(n, s[n], calls[n]) for n in op_names]
    rows.append(("forward: python between ops", s["phase: forward"] - in_forward, 0))
    runner_rest = s["phase: runner total"] - s["phase: forward"] - s["phase: step metadata"] - s["lm_head"]
    rows.append(("runner: logits gather + fp32 copy", runner_rest, 0))
    step_rest = (s["phase: step total"] - s["phase: runner total"] - s["phase: schedule"] - s["phase: sample"]
                 - s["phase: postprocess"])
    for name in ("phase: step metadata", "phase: schedule", "phase: sample", "phase: postprocess"):
        rows.append((name, s[name], calls[name]))
    rows.append(("step: other engine work", step_rest, 0))
    rows.append(("outside steps (generate loop, intake)", total - s["phase: step total"], 0))
    lines = [f"  {'where':<40} {'seconds':>9} {'share':>7} {'calls':>8} {'us/call':>9}"]
    for name, sec, n in rows:
        per = f"{sec / n * 1e6:9.0f}" if n else " " * 9
        lines.append(f"  {name:<40} {sec:9.3f} {sec / total:7.1%} {n:8d} {per}")
    lines.append(f"  {'total':<40} {total:9.3f} {1:7.1%}")
    return lines


def _load() -> str:
    """The 1, 5 and 15 minute load averages (Linux), to print beside the figures."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -P -m tide.benchmarks.step_profile", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--workload", default="fixed", choices=["chat", "fixed"])
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--input-len", type=int, default=256)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--max-num-batched-tokens", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu: the engine thread's CPU time instead of wall time, which a busy machine disturbs far "
                        "less; it leaves out the other threads' work, so use it with --threads 1")
    p.add_argument("--torch-trace", default=None, metavar="PATH",
                   help="also record the timed calls with torch.profiler and write a Chrome trace to PATH")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    args.kv_cache_gib, args.speculative, args.draft_model, args.peer, args.device = None, "off", None, None, "cpu"
    args.no_prefix_caching = True  # as in the side-by-side runs
    threads = args.threads or torch.get_num_threads()
    llm = _make_llm(args, threads)
    workload = build_workload(args.workload, llm.tokenizer, args.num_prompts, args.input_len, args.output_len,
                              args.seed)
    _wait_for_kv_pages(llm)  # as `tide bench` does before its timed pass
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    timers = Timers(args.torch_trace is not None, clock)
    fused = llm.engine.runner.model.native_layers is not None
    install(llm, timers)
    load_before = _load()
    print(f"profile: {args.model}, {args.dtype}, {threads} threads, max_num_seqs {args.max_num_seqs}, "
          f"max_num_batched_tokens {args.max_num_batched_tokens}\nworkload {workload.describe()}")
    if fused:
        print("the engine runs its middle layers as one native call each; here they run as modules, one timed op at "
              "a time (a few percent slower)")
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) if args.torch_trace else None
    started = clock()
    with profiler or contextlib.nullcontext():
        result = run_tide(llm, workload)
    total = clock() - started
    print(result.line())
    print(f"{args.clock} clock; load average before/after: {load_before} / {_load()}")
    print("\n".join(report(timers, total)))
    if profiler is not None:
        profiler.export_chrome_trace(args.torch_trace)
        print(f"trace written to {args.torch_trace}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
