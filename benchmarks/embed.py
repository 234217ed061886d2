"""`tide bench --embed`: Tide's embedding engine against sentence-transformers' `encode` on the same texts, in one run.

Both sides embed the same seeded texts (a search index's length mix, `workloads.embedding_texts`) with the same
dtype, device and thread count, each after a warm-up. sentence-transformers runs `encode(batch_size=...)` at each of
a few batch sizes and its best is the reference. With `--repeats` every side runs that many times, interleaved, and
keeps its best: on a busy machine that is the figure least disturbed by the others. The run ends with the texts/s
ratio and how closely the vectors agree (cosine).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from tide.benchmarks.workloads import embedding_texts
from tide.engine.encoder.embedder import Embedder
from tide.engine.loader import resolve_model

WARMUP_TEXTS = 64


@dataclass
class Side:
    label: str
    seconds: float = float("inf")  # the best of its runs
    vectors: np.ndarray | None = None

    def line(self, num_texts: int, tokens: int) -> str:
        return (f"  {self.label:<22} {num_texts / self.seconds:9.1f} texts/s {tokens / self.seconds:10.0f} tokens/s"
                f"   ({self.seconds:.2f} s)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tide bench --embed", description="Tide's embedding engine against "
                                "sentence-transformers' encode(batch_size=...) on the same texts, in one run.")
    p.add_argument("--model", default="all-minilm-l6-v2", help="alias or sentence-transformers directory")
    p.add_argument("--num-texts", type=int, default=10_000)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None, help="torch threads for both sides (default: all cores)")
    p.add_argument("--st-batch-sizes", default="32,64,128,256",
                   help="comma list; sentence-transformers' best of these is the reference")
    p.add_argument("--max-num-batched-tokens", type=int, default=None, help="Tide's token budget per forward")
    p.add_argument("--max-num-seqs", type=int, default=None, help="Tide's texts per forward")
    p.add_argument("--repeats", type=int, default=1, help="runs of each side, interleaved; each keeps its best")
    p.add_argument("--skip-st", action="store_true", help="run Tide only")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        batch_sizes = sorted({int(b) for b in args.st_batch_sizes.split(",") if b.strip()})
    except ValueError:
        print(f"tide bench --embed: error: --st-batch-sizes must be a comma list of integers, got "
              f"{args.st_batch_sizes!r}", file=sys.stderr)
        return 2
    threads = args.threads or os.cpu_count() or 1
    texts = embedding_texts(args.num_texts, args.seed)
    embedder = _embedder(args, threads)
    tokens = sum(len(t) for t in embedder.engine.tokenizer(texts, truncation=True,
                                                           max_length=embedder.engine.max_tokens)["input_ids"])
    print(f"tide bench --embed: model {args.model}, {args.dtype} on {args.device}, {threads} threads; "
          f"{len(texts)} texts, {tokens} tokens after truncation to {embedder.engine.max_tokens} "
          f"(mean {tokens / len(texts):.0f})")
    st_model = None if args.skip_st else _sentence_transformer(args)
    tide, st = Side("tide"), {b: Side(f"sentence-transformers {b}") for b in batch_sizes}
    before = _counts(embedder)
    for _ in range(args.repeats):
        _time(tide, lambda: embedder.embed(texts))
        for batch_size, side in ({} if st_model is None else st).items():
            _time(side, lambda: st_model.encode(texts, batch_size=batch_size, convert_to_numpy=True))
    print(tide.line(len(texts), tokens))
    _print_engine(embedder, before)
    if st_model is not None:
        for side in st.values():
            print(side.line(len(texts), tokens))
        best = min(st.values(), key=lambda s: s.seconds)
        cos = _cosines(tide.vectors, best.vectors)
        print(f"  ratio tide/sentence-transformers (best: batch {best.label.rsplit(' ', 1)[1]}): texts/s "
              f"{best.seconds / tide.seconds:.2f}x; cosine min {cos.min():.6f}, mean {cos.mean():.6f}")
    return 0


def _embedder(args: argparse.Namespace, threads: int) -> Embedder:
    options = {k: v for k, v in (("max_num_batched_tokens", args.max_num_batched_tokens),
                                 ("max_num_seqs", args.max_num_seqs)) if v is not None}
    embedder = Embedder(args.model, dtype=args.dtype, device=args.device, num_threads=threads, **options)
    embedder.embed(embedding_texts(WARMUP_TEXTS, args.seed + 1))
    return embedder


def _sentence_transformer(args: argparse.Namespace):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(resolve_model(args.model)), device=args.device)
    model = model.to(getattr(torch, args.dtype))
    model.encode(embedding_texts(WARMUP_TEXTS, args.seed + 1))
    return model


def _time(side: Side, run) -> None:
    _sync()
    started = time.perf_counter()
    vectors = run()
    _sync()
    seconds = time.perf_counter() - started
    if seconds < side.seconds:
        side.seconds, side.vectors = seconds, np.asarray(vectors, dtype=np.float32)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _counts(embedder: Embedder) -> tuple[int, float, int, int]:
    """(forwards, summed occupancy, real tokens, padded tokens) the engine has run so far."""
    engine = embedder.engine
    stats = engine.stats
    return stats.num_steps, stats.mean_batch_occupancy * stats.num_steps, stats.prompt_tokens, engine.padded_tokens


def _print_engine(embedder: Embedder, before: tuple[int, float, int, int]) -> None:
    steps, occupancy, real, padded = (now - then for now, then in zip(_counts(embedder), before))
    per_forward = occupancy / max(steps, 1) * embedder.engine.config.max_num_seqs
    print(f"  engine: {steps} forwards, {per_forward:.0f} texts per forward on average; attention padding "
          f"{padded / max(real, 1) - 1:.1%} over the real tokens")


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


if __name__ == "__main__":
    sys.exit(main())
