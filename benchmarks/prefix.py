"""What prefix grouping gains: the same shard with and without reordering, on prompts that share long preambles.

    python -P -m tide.benchmarks.prefix [--preambles 6] [--questions 12] [--preamble-tokens 500]

Rows arrive interleaved (preamble 1, 2, ..., 1, 2, ...), as they would from a file mixing several few-shot
templates. Each run gets a fresh engine with the same (deliberately modest) KV budget, so the prefix cache has to
choose what to keep; the report shows wall time, prompt tokens actually computed, and the cache hit rate.
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

WORDS = ("river stone market lantern orbit signal garden copper window harbor thunder pencil meadow engine "
         "silver ladder canyon violin rocket marble forest bridge planet candle anchor mirror island tiger").split()


def make_preambles(tokenizer, count: int, tokens: int, rng: random.Random) -> list[str]:
    preambles = []
    for i in range(count):
        words = [f"Template {i}. Read the notes and answer briefly."]
        while len(tokenizer(" ".join(words)).input_ids) < tokens:
            words += [rng.choice(WORDS) for _ in range(20)]
        preambles.append(" ".join(words))
    return preambles


def kv_bytes_per_token(model_dir: Path, dtype: str) -> int:
    """2 (K and V) x layers x KV heads x head dim x element size, as the engine reserves it."""
    import torch

    from tide.engine.loader import load_config
    from tide.engine.startup import pick_device, pick_dtype

    config = load_config(model_dir)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    element = torch.empty((), dtype=pick_dtype(dtype, pick_device("auto"))).element_size()
    return 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * element


def run(service_factory, rows_path: Path, out: Path, grouped: bool, max_tokens: int) -> dict:
    from tide.jobs.embedded import run_embedded
    from tide.jobs.ordering import group_by_prefix
    from tide.jobs.results import iter_output_rows
    from tide.jobs.specs import JobSpec
    from tide.jobs.storage import StorageConfig, resolve
    from tide.jobs.webhooks.courier import WebhookConfig

    service, storage = service_factory(), StorageConfig()
    try:
        spec = JobSpec(input=str(rows_path), output=str(out), shard_rows=100_000,
                       sampling={"temperature": 0.0, "max_tokens": max_tokens, "ignore_eos": True})
        started = time.perf_counter()
        job = run_embedded(spec, service, storage=storage, webhooks=WebhookConfig(), price_per_worker_hour=0.0,
                           shards_in_flight=1, show_progress=False, order=group_by_prefix if grouped else list)
        wall = time.perf_counter() - started
        summary = json.loads(resolve(job.summary_uri, storage).read_bytes())
        stats = service.engine.stats
        cached = sum(r["cached_prompt_tokens"] for r in iter_output_rows(resolve(job.output_prefix, storage)))
        return {"wall": wall, "hit_rate": stats.prefix_cache_hit_rate, "preemptions": stats.preemptions,
                "out_tok_s": summary["usage"]["completion_tokens"] / wall, "cached": cached,
                "prompt": summary["usage"]["prompt_tokens"]}
    finally:
        service.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -P -m tide.benchmarks.prefix", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--preambles", type=int, default=6)
    parser.add_argument("--questions", type=int, default=12)
    parser.add_argument("--preamble-tokens", type=int, default=500)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--max-num-seqs", type=int, default=16)
    parser.add_argument("--kv-tokens", type=int, default=4096, help="KV cache size, in tokens")
    args = parser.parse_args(argv)

    from tide.engine import EngineConfig, LLMEngine
    from tide.engine.loader import load_tokenizer, resolve_model
    from tide.workers.engine_service import EngineService

    model_dir = resolve_model(args.model)
    kv_bytes = kv_bytes_per_token(model_dir, args.dtype) * args.kv_tokens

    def service_factory() -> EngineService:
        return EngineService(LLMEngine(EngineConfig(model=args.model, dtype=args.dtype,
                                                    max_num_seqs=args.max_num_seqs, kv_cache_bytes=kv_bytes)))

    tokenizer = load_tokenizer(model_dir)
    rng = random.Random(0)
    preambles = make_preambles(tokenizer, args.preambles, args.preamble_tokens, rng)
    rows = [{"id": f"p{p}-q{q}", "prompt": f"{preambles[p]}\nQuestion {q}: what is item {q}?\nAnswer:"}
            for q in range(args.questions) for p in range(args.preambles)]
    with tempfile.TemporaryDirectory(prefix="tide-prefix-") as tmp:
        path = Path(tmp) / "rows.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        results = {name: run(service_factory, path, Path(tmp) / name, grouped, args.max_tokens)
                   for name, grouped in (("input order", False), ("grouped", True))}
    print(f"{len(rows)} rows: {args.preambles} preambles of ~{args.preamble_tokens} tokens x {args.questions} "
          f"questions, {args.max_tokens} output tokens, KV cache {args.kv_tokens} tokens, "
          f"max_num_seqs {args.max_num_seqs}")
    for name, r in results.items():
        print(f"  {name:<12} {r['wall']:6.1f} s  {r['out_tok_s']:6.1f} out tok/s  prompt tokens computed "
              f"{r['prompt'] - r['cached']}/{r['prompt']}  hit rate {r['hit_rate']:.1%}  "
              f"preemptions {r['preemptions']}")
    base, grouped = results["input order"], results["grouped"]
    print(f"grouping speed-up: {base['wall'] / grouped['wall']:.2f}x wall time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
