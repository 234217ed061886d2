"""`tide bench`: Tide's engine against HF transformers `generate` on the same seeded workload, in one run.

Both sides get the same token ids, greedy decoding and the same dtype, device and thread count; the run counts the
requests whose greedy outputs are identical. HF runs static batches with
left padding at each of a few batch sizes and its best is the reference. Besides the throughput ratios the run
reports the engine's stats, the share of engine time spent in paged attention, and the model FLOP/s reached as a
fraction of the best rate the engine's own linear layers reach on the model's shapes, measured in the same run.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

import torch

from tide.benchmarks.workloads import Workload, build_workload
from tide.engine.llm import LLM
from tide.engine.loader import resolve_model
from tide.engine.sampling_params import SamplingParams
from tide.engine.startup import pick_device
from tide.engine.stats import EngineStats


@dataclass
class RunResult:
    """Throughput of one side on one workload."""

    label: str
    num_requests: int
    prompt_tokens: int
    output_tokens: int
    seconds: float
    token_ids: list[list[int]] | None = field(default=None, repr=False)

    @property
    def rates(self) -> tuple[float, float, float]:
        """(requests/s, total tokens/s, output tokens/s)."""
        s = self.seconds
        return self.num_requests / s, (self.prompt_tokens + self.output_tokens) / s, self.output_tokens / s

    def line(self) -> str:
        req, total, out = self.rates
        return (f"  {self.label:<14} {req:8.2f} req/s {total:10.1f} total tok/s {out:9.1f} output tok/s"
                f"   ({self.output_tokens} output tokens in {self.seconds:.1f} s)")


@dataclass
class Probe:
    """Counts what the engine's model runner computes and times it and the paged-attention calls inside it."""

    tokens_computed: int = 0
    rows_sampled: int = 0
    forward_s: float = 0.0
    attention_s: float = 0.0
    _timers: list = field(default_factory=list, repr=False)

    def install(self, llm: LLM) -> None:
        runner = llm.engine.runner
        forward = runner.forward

        def counted_forward(scheduled, hidden_rows):
            started = time.perf_counter()
            logits, sampling, hidden = forward(scheduled, hidden_rows)
            self.forward_s += time.perf_counter() - started
            self.tokens_computed += sum(n for _, n in scheduled)
            self.rows_sampled += len(sampling)
            return logits, sampling, hidden

        runner.forward = counted_forward
        for layer in runner.model.layers:
            attn = layer.self_attn
            attn.ops = dataclasses.replace(attn.ops, paged_attention=self._timed(attn.ops.paged_attention))

    def _timed(self, fn):
        def timed(*args, **kwargs):
            started = time.perf_counter()
            out = fn(*args, **kwargs)
            self.attention_s += time.perf_counter() - started
            return out

        return timed


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tide bench", description="Tide's engine against HF transformers `generate` on "
                                "the same seeded workload, in one run.")
    p.add_argument("--model", default="smollm2-135m", help="alias, HF directory or GGUF file (default smollm2-135m)")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where both sides run (auto: CUDA when torch sees a GPU)")
    p.add_argument("--workload", default="both", choices=["chat", "fixed", "both"])
    p.add_argument("--num-prompts", type=int, default=64, help="requests per workload")
    p.add_argument("--input-len", type=int, default=256, help="prompt tokens per request in the fixed workload")
    p.add_argument("--output-len", type=int, default=128, help="output tokens per request in the fixed workload")
    p.add_argument("--hf-batch-sizes", default="16,64", help="comma list; HF's best of these is the reference")
    p.add_argument("--threads", type=int, default=None, help="torch threads for both sides (default: all cores)")
    p.add_argument("--skip-hf", action="store_true", help="run Tide only")
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--max-num-batched-tokens", type=int, default=1024)
    p.add_argument("--kv-cache-gib", type=float, default=None, help="KV budget (default: the engine's fraction)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", action="store_true",
                   help="run each side once, untimed, on the workload drawn with seed + 1 first (a GPU compiles "
                        "kernels on first use)")
    p.add_argument("--peer", choices=["vllm"], default=None,
                   help="also run the workload on vLLM's CPU build, right after Tide (prefix caching off on both)")
    p.add_argument("--peer-python", default=os.environ.get("TIDE_PEER_PYTHON", "python"),
                   help="the Python of the peer's own environment (default $TIDE_PEER_PYTHON or python)")
    p.add_argument("--no-prefix-caching", action="store_true", help="turn Tide's prefix cache off (implied by --peer)")
    p.add_argument("--speculative", choices=["off", "ngram", "draft"], default="off",
                   help="speculative decoding in Tide (greedy rows; benchmarks/speculative.py compares it)")
    p.add_argument("--draft-model", default=None, help="draft model for --speculative draft")
    p.add_argument("--twin-baseline", action="store_true",
                   help="also run Tide with the PyTorch twins for every kernel, right before, and print the ratio")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; prints one block per workload with the Tide/HF ratios."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        batch_sizes = sorted({int(b) for b in args.hf_batch_sizes.split(",") if b.strip()})
    except ValueError:
        print(f"tide bench: error: --hf-batch-sizes must be a comma list of integers, got {args.hf_batch_sizes!r}",
              file=sys.stderr)
        return 2
    threads = args.threads or os.cpu_count() or 1
    names = ["chat", "fixed"] if args.workload == "both" else [args.workload]
    args.device = str(pick_device(args.device))
    print(f"tide bench: model {args.model}, dtype {args.dtype}, device {args.device}, {threads} threads, "
          f"max_num_seqs {args.max_num_seqs}, max_num_batched_tokens {args.max_num_batched_tokens}")
    peak = None
    for name in names:
        llm = _make_llm(args, threads)
        if peak is None:
            print(f"paged attention: {attention_path(llm)}")
            peak = measure_linear_peak(llm.engine.runner.model, sorted({args.max_num_seqs, 256}), args.device)
        workload = build_workload(name, llm.tokenizer, args.num_prompts, args.input_len, args.output_len, args.seed)
        print(f"\nworkload {workload.describe()}")
        twins = run_twin_baseline(args, workload, threads) if args.twin_baseline else None
        warm = (build_workload(name, llm.tokenizer, args.num_prompts, args.input_len, args.output_len, args.seed + 1)
                if args.warmup else None)
        if warm is not None:
            run_tide(llm, warm)
            # The report counts the timed pass only.
            llm.engine.stats = EngineStats(load_time_s=llm.engine.stats.load_time_s)
        _wait_for_kv_pages(llm)
        probe = Probe()
        probe.install(llm)
        tide = run_tide(llm, workload)
        print(tide.line())
        _print_engine_report(llm, probe, tide, peak)
        if twins is not None:
            print(f"  ratio tide/tide-twins: output tokens/s {tide.rates[2] / twins.rates[2]:.2f}x, identical outputs "
                  f"{sum(a == b for a, b in zip(tide.token_ids, twins.token_ids))}/{len(tide.token_ids)}")
        del llm
        gc.collect()
        if args.peer:
            run_peer(args, workload, tide, threads)
        if not args.skip_hf:
            best = run_hf_best(args, workload, batch_sizes, threads, warm)
            _print_ratios(tide, best)
    return 0


def _wait_for_kv_pages(llm: LLM) -> None:
    """Let the engine map the KV pages ahead of its first blocks before the timed pass, as a worker does while it
    waits for work (engine/kv_pages.py); the time is printed, not counted."""
    warmer = llm.engine.runner.page_warmer
    if warmer is None:
        return
    started = time.perf_counter()
    done = warmer.wait_idle(60)
    print(f"  KV pages of the first {warmer.populated} blocks mapped {'' if done else 'in part '}before the timed "
          f"pass (waited {time.perf_counter() - started:.2f} s)")


def run_twin_baseline(args: argparse.Namespace, workload: Workload, threads: int) -> RunResult:
    """The same engine with the PyTorch twins for every kernel (TIDE_KERNELS=torch): the before of the native ops."""
    saved = os.environ.get("TIDE_KERNELS")
    os.environ["TIDE_KERNELS"] = "torch"
    try:
        llm = _make_llm(args, threads)
    finally:
        if saved is None:
            del os.environ["TIDE_KERNELS"]
        else:
            os.environ["TIDE_KERNELS"] = saved
    result = dataclasses.replace(run_tide(llm, workload), label="tide-twins")
    print(result.line())
    del llm
    gc.collect()
    return result


def attention_path(llm: LLM) -> str:
    """Which paged attention the engine runs, in words."""
    from tide.kernels.dispatch import cpu_attention_path

    return "Triton kernels" if llm.engine.runner.model.ops.backend == "triton" else cpu_attention_path()


def _make_llm(args: argparse.Namespace, threads: int) -> LLM:
    kv_bytes = None if args.kv_cache_gib is None else int(args.kv_cache_gib * 2**30)
    return LLM(model=args.model, dtype=args.dtype, device=args.device, num_threads=threads,
               max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
               kv_cache_bytes=kv_bytes, seed=args.seed,
               enable_prefix_caching=not (args.peer or args.no_prefix_caching), speculative=args.speculative,
               draft_model=args.draft_model)


# ---- the two sides --------------------------------------------------------------------------------------------------

def run_tide(llm: LLM, workload: Workload) -> RunResult:
    params = SamplingParams(temperature=0.0, max_tokens=workload.max_tokens, ignore_eos=workload.ignore_eos)
    started = time.perf_counter()
    outputs = llm.generate(workload.prompts, params)
    seconds = time.perf_counter() - started
    failed = [o for o in outputs if o.error]
    if failed:
        raise RuntimeError(f"{len(failed)} requests failed in the engine, e.g. {failed[0].error}")
    return RunResult("tide", len(outputs), sum(len(p) for p in workload.prompts),
                     sum(len(o.token_ids) for o in outputs), seconds, [list(o.token_ids) for o in outputs])


def run_peer(args: argparse.Namespace, workload: Workload, tide: RunResult, threads: int) -> None:
    """The workload on the peer (vLLM's CPU build) in its own environment; prints its figures and the ratios."""
    from tide.benchmarks.peer_vllm import run_vllm

    try:
        peer = run_vllm(args.peer_python, str(resolve_model(args.model)), args.dtype, workload.prompts,
                        workload.max_tokens, workload.ignore_eos, args.max_num_seqs, args.max_num_batched_tokens,
                        threads)
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"  vllm: not run ({exc})")
        return
    result = RunResult("vllm", len(peer["token_ids"]), sum(len(p) for p in workload.prompts),
                       sum(len(t) for t in peer["token_ids"]), peer["seconds"], peer["token_ids"])
    print(result.line() + f"   (loaded in {peer['load_seconds']:.0f} s)")
    same = sum(a == b for a, b in zip(tide.token_ids or [], result.token_ids))
    ratios = [t / v for t, v in zip(tide.rates, result.rates)]
    print(f"  ratio tide/vllm: requests/s {ratios[0]:.2f}x, total tokens/s {ratios[1]:.2f}x, output tokens/s "
          f"{ratios[2]:.2f}x; identical outputs {same}/{len(result.token_ids)}")


def run_hf_best(args: argparse.Namespace, workload: Workload, batch_sizes: list[int], threads: int,
                warm: Workload | None = None) -> RunResult:
    """HF `generate` at each batch size (after an untimed pass over `warm`, if given); prints each and returns the best
    by output tokens/s."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    model_dir = resolve_model(args.model)
    dtype = getattr(torch, args.dtype)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(args.device).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    eos = _eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos)
    results = []
    for batch_size in batch_sizes:
        if warm is not None:
            run_hf(model, warm, batch_size, eos, pad)
        result = run_hf(model, workload, batch_size, eos, pad)
        print(result.line())
        results.append(result)
    return max(results, key=lambda r: r.rates[2])


def run_hf(model, workload: Workload, batch_size: int, eos: set[int], pad: int) -> RunResult:
    """Static batches in workload order, left-padded; counts generated tokens up to and including the first EOS."""
    from transformers import GenerationConfig

    config = GenerationConfig(do_sample=False, max_new_tokens=workload.max_tokens,
                              min_new_tokens=workload.max_tokens if workload.ignore_eos else 0,
                              eos_token_id=sorted(eos), pad_token_id=pad)
    token_ids: list[list[int]] = []
    started = time.perf_counter()
    for i in range(0, len(workload.prompts), batch_size):
        input_ids, mask = _left_pad(workload.prompts[i : i + batch_size], pad)
        with torch.inference_mode():
            out = model.generate(input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device),
                                 generation_config=config)
        token_ids += [row[: _generated_length(row, eos)] for row in out[:, input_ids.shape[1]:].tolist()]
    seconds = time.perf_counter() - started
    return RunResult(f"hf batch {batch_size}", len(workload.prompts), sum(len(p) for p in workload.prompts),
                     sum(map(len, token_ids)), seconds, token_ids)


def _left_pad(prompts: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def _generated_length(row: list[int], eos: set[int]) -> int:
    for i, token in enumerate(row):
        if token in eos:
            return i + 1
    return len(row)


def _eos_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids) if isinstance(ids, (list, tuple)) else ({ids} if ids is not None else set())
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


# ---- machine rate and report ----------------------------------------------------------------------------------------

def linear_shapes(model) -> dict[str, tuple[torch.nn.Module, int, int]]:
    """The model's matmuls as name -> (the engine's own module, in_features, out_features)."""
    a = model.args
    q, kv = a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim
    layer = model.layers[0]
    return {
        "qkv": (layer.self_attn.qkv_proj, a.hidden_size, q + 2 * kv),
        "o": (layer.self_attn.o_proj, q, a.hidden_size),
        "gate_up": (layer.mlp.gate_up_proj, a.hidden_size, 2 * a.intermediate_size),
        "down": (layer.mlp.down_proj, a.intermediate_size, a.hidden_size),
        "lm_head": (model.lm_head, a.hidden_size, a.vocab_size),
    }


@torch.inference_mode()
def measure_linear_peak(model, token_counts: list[int], device: str = "cpu", min_seconds: float = 0.1) -> float:
    """Best FLOP/s of the engine's linear layers over the model's shapes at `token_counts` rows; prints each shape."""
    dtype = next(model.parameters()).dtype
    # A GPU runs the products asynchronously: the clock is read only once they have finished.
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    best = 0.0
    print("linear layers (the engine's own modules), best GFLOP/s at rows " + "/".join(map(str, token_counts)) + ":")
    for name, (module, k, n) in linear_shapes(model).items():
        rates = []
        for m in token_counts:
            x = torch.randn(m, k, dtype=dtype, device=device)
            module(x)
            sync()
            reps, elapsed = 0, 0.0
            started = time.perf_counter()
            while elapsed < min_seconds:
                module(x)
                sync()
                reps += 1
                elapsed = time.perf_counter() - started
            rates.append(2 * m * k * n * reps / elapsed)
        best = max(best, *rates)
        print(f"  {name:<8} [{k} -> {n}]  " + "  ".join(f"{r / 1e9:7.1f}" for r in rates))
    return best


def model_flops(model, tokens_computed: int, rows_sampled: int) -> float:
    """2 x non-embedding linear weights per computed token, plus lm_head for the rows that are sampled."""
    a = model.args
    per_token = sum(k * n for name, (_, k, n) in linear_shapes(model).items() if name != "lm_head") * a.num_layers
    return 2.0 * per_token * tokens_computed + 2.0 * a.hidden_size * a.vocab_size * rows_sampled


def _print_engine_report(llm: LLM, probe: Probe, tide: RunResult, peak: float) -> None:
    stats = llm.engine.stats
    print(f"  engine: {stats.num_steps} steps, {stats.preemptions} preemptions, prefix hit rate "
          f"{stats.prefix_cache_hit_rate:.1%}, mean batch occupancy {stats.mean_batch_occupancy:.1%}, "
          f"{probe.tokens_computed} tokens computed")
    if stats.spec_proposed_tokens:
        print(f"  speculative decoding: {stats.spec_acceptance_rate:.1%} of {stats.spec_proposed_tokens} draft tokens "
              f"accepted, {stats.generation_tokens / stats.num_steps:.2f} output tokens per step")
    attention = (f"paged attention {probe.attention_s / tide.seconds:.1%} of wall time "
                 f"({probe.attention_s / probe.forward_s:.1%} of forward)")
    if llm.engine.runner.model.native_layers is not None:  # its calls happen inside the fused layers' C code
        attention = "paged attention not timed (layers run as one native call each; see step_profile)"
    print(f"  engine time: model forward+logits {probe.forward_s / tide.seconds:.1%} of wall time, {attention}")
    achieved = model_flops(llm.engine.runner.model, probe.tokens_computed, probe.rows_sampled) / tide.seconds
    print(f"  matmul rate: tide reached {achieved / 1e9:.1f} model GFLOP/s = {achieved / peak:.1%} of the best "
          f"linear-shape rate measured ({peak / 1e9:.1f} GFLOP/s)")


def _print_ratios(tide: RunResult, hf: RunResult) -> None:
    ratios = [t / h for t, h in zip(tide.rates, hf.rates)]
    same = sum(a == b for a, b in zip(tide.token_ids or [], hf.token_ids or []))
    print(f"  ratio tide/hf (best: {hf.label}): requests/s {ratios[0]:.2f}x, total tokens/s {ratios[1]:.2f}x, "
          f"output tokens/s {ratios[2]:.2f}x; identical outputs {same}/{len(hf.token_ids or [])}")


if __name__ == "__main__":
    sys.exit(main())
