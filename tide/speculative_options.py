"""The speculative-decoding flags `tide worker` and `tide run` share, defaulting from Settings."""
from __future__ import annotations

import argparse

from tide.settings import Settings


def add_speculative_options(p: argparse.ArgumentParser, settings: Settings) -> None:
    g = p.add_argument_group("speculative decoding (greedy rows)")
    g.add_argument("--speculative", choices=["off", "ngram", "draft"], default=settings.speculative,
                   help="ngram: drafts looked up in the prompt and output; draft: proposed by --draft-model")
    g.add_argument("--num-speculative-tokens", type=int, default=settings.num_speculative_tokens,
                   help="draft tokens per sequence and step")
    g.add_argument("--draft-model", default=settings.draft_model,
                   help="smaller model with the same tokenizer (alias, HF directory or GGUF file)")
    g.add_argument("--spec-ngram-min", type=int, default=settings.spec_ngram_min)
    g.add_argument("--spec-ngram-max", type=int, default=settings.spec_ngram_max)
    g.add_argument("--spec-max-running", type=int, default=settings.spec_max_running,
                   help="speculate only while at most this many sequences run")


def speculative_config(args: argparse.Namespace) -> dict:
    """The EngineConfig fields the flags set."""
    return {"speculative": args.speculative, "num_speculative_tokens": args.num_speculative_tokens,
            "draft_model": args.draft_model, "spec_ngram_min": args.spec_ngram_min,
            "spec_ngram_max": args.spec_ngram_max, "spec_max_running": args.spec_max_running}
