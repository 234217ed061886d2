"""What the commands share: the one user-error type, and flags several commands take, defaulting from Settings.

A leaf: it imports only Settings and the job spec, so every command module may import it and none imports the CLI.
"""
from __future__ import annotations

import argparse
import json

from tide.jobs.specs import ColumnMap, JobSpec
from tide.settings import Settings


class UsageError(Exception):
    """A mistake the user can fix (a bad argument, a model that cannot load); printed as one line."""


def add_redis_option(p: argparse.ArgumentParser, settings: Settings) -> None:
    p.add_argument("--redis-url", default=settings.redis_url,
                   help=f"job store and broker (default $TIDE_REDIS_URL or {settings.redis_url})")


def add_engine_options(p: argparse.ArgumentParser, settings: Settings) -> None:
    """Model precision, speculative decoding and embedding pooling, as `tide worker` and `tide run` take them."""
    p.add_argument("--dtype", default=settings.dtype, choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--quantization", default=settings.quantization, choices=["none", "int8"],
                   help="int8: decoder projections as int8 weights with per-output-channel scales")
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
    g = p.add_argument_group("embedding models")
    g.add_argument("--pooling", choices=["mean", "cls", "last", "max"], default=settings.pooling,
                   help="pooling in place of the model's own (required for a decoder model without "
                        "sentence-transformers files)")
    g.add_argument("--matryoshka", action="store_true", default=settings.matryoshka,
                   help="the model was trained for shorter vectors: rows may ask for fewer dimensions")
    g = p.add_argument_group("LoRA adapters (rows pick one with \"lora\")")
    g.add_argument("--adapter", dest="adapters", action="append", type=name_and_source, metavar="NAME=SOURCE",
                   default=[name_and_source(pair) for pair in (settings.lora_adapters or "").split(",") if pair],
                   help="serve a PEFT adapter directory or s3:// prefix under NAME (repeatable; $TIDE_LORA_ADAPTERS)")
    g.add_argument("--max-loras", type=int, default=settings.max_loras, help="adapters resident at once")
    g.add_argument("--max-lora-rank", type=int, default=settings.max_lora_rank, help="highest adapter rank accepted")


def embedding_config(args: argparse.Namespace) -> dict:
    """The EncoderConfig fields the embedding flags set (the engine service takes them for an embedding model)."""
    return {"pooling": args.pooling, "matryoshka": args.matryoshka}


def speculative_config(args: argparse.Namespace) -> dict:
    """The EngineConfig fields the speculative flags set."""
    return {"speculative": args.speculative, "num_speculative_tokens": args.num_speculative_tokens,
            "draft_model": args.draft_model, "spec_ngram_min": args.spec_ngram_min,
            "spec_ngram_max": args.spec_ngram_max, "spec_max_running": args.spec_max_running}


def lora_config(args: argparse.Namespace) -> dict:
    """The EngineConfig fields the LoRA flags set."""
    return {"lora_adapters": dict(args.adapters), "max_loras": args.max_loras, "max_lora_rank": args.max_lora_rank}


def name_and_source(text: str) -> tuple[str, str]:
    """An argparse type: NAME=SOURCE."""
    name, sep, source = text.strip().partition("=")
    if not sep or not name.strip() or not source.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=SOURCE (an adapter name, '=', a directory or s3:// "
                                         "prefix)")
    return name.strip(), source.strip()


def add_job_options(p: argparse.ArgumentParser, settings: Settings, max_tokens: int | None) -> None:
    """The input and its defaults, as `tide run` and `tide submit` take them."""
    p.add_argument("input", help="JSONL or Parquet file: local path or s3://bucket/key")
    p.add_argument("--model", default=None, help="model alias, HF directory or GGUF file (default: the model the "
                   f"input's first batch line names, else $TIDE_MODEL or {settings.model})")
    p.add_argument("--task", choices=["auto", "generate", "embed"], default="auto",
                   help="what the rows ask for: completions or embeddings (default: the first batch line's url, "
                        "else what the model serves)")
    p.add_argument("--format", choices=["auto", "jsonl", "parquet"], default="auto")
    p.add_argument("--max-tokens", type=int, default=max_tokens, help="default max tokens per row")
    p.add_argument("--temperature", type=float, default=None, help="default sampling temperature")
    p.add_argument("--sampling", type=json_object, default={}, help="more sampling defaults as a JSON object")
    p.add_argument("--lora", default=None, help="LoRA adapter for rows that name none (default: the base model)")
    p.add_argument("--shard-rows", type=int, default=settings.shard_rows, help="rows per shard")
    p.add_argument("--prompt-column", default="prompt")
    p.add_argument("--messages-column", default="messages")
    p.add_argument("--input-column", default="input", help="the text to embed, for a job with task embed")
    p.add_argument("--id-column", default="id")


def spec_from_args(args: argparse.Namespace, output: str, model: str, task: str, **extra) -> JobSpec:
    """The JobSpec `add_job_options`' flags describe, for `model` and `task` as the command settled them."""
    sampling = dict(args.sampling)
    if args.max_tokens is not None:
        sampling["max_tokens"] = args.max_tokens
    if args.temperature is not None:
        sampling["temperature"] = args.temperature
    if args.lora is not None:
        sampling["lora"] = args.lora
    columns = ColumnMap(prompt=args.prompt_column, messages=args.messages_column, input=args.input_column,
                        id=args.id_column)
    return JobSpec(input=args.input, format=args.format, model=model, task=task, sampling=sampling, columns=columns,
                   output=output, shard_rows=args.shard_rows, **extra)


def json_object(text: str) -> dict:
    """An argparse type: a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"top_p\": 0.9}'")
    return value
