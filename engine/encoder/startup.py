"""What the embedding engine builds once at start: device and dtype, the model with its weights, its tokenizer, and
how it pools and where it truncates."""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from tide.engine.encoder.bert import ARCHITECTURES, BertArgs, BertEncoder
from tide.engine.encoder.config import EncoderConfig
from tide.engine.encoder.decoder import DecoderEncoder
from tide.engine.encoder.packing import PackedBatch
from tide.engine.encoder.pooling import PoolingSpec, read_pooling
from tide.engine.loader import iter_weights, load_config, load_tokenizer, resolve_model
from tide.engine.models import SUPPORTED_ARCHITECTURES
from tide.engine.models.cpu_linear import can_pack, pack_linears
from tide.engine.startup import pick_device, pick_dtype

logger = logging.getLogger("tide.engine")


@dataclass
class EncoderParts:
    model: Callable[[PackedBatch], torch.Tensor]  # packed texts -> [T, hidden] final token states
    tokenizer: object
    pooling: PoolingSpec
    max_tokens: int  # inputs are truncated (or refused) beyond this many tokens
    hidden_size: int
    vocab_size: int
    device: torch.device
    load_time_s: float


def build_encoder_parts(config: EncoderConfig) -> EncoderParts:
    started = time.perf_counter()
    model_dir = resolve_model(config.model)
    hf_config = load_config(model_dir)
    tokenizer = load_tokenizer(model_dir)
    device = pick_device(config.device)
    dtype = pick_dtype(config.dtype, device)
    if device.type == "cpu":
        torch.set_num_threads(config.num_threads or os.cpu_count() or 1)
    arch = (getattr(hf_config, "architectures", None) or ["<none given in config.json>"])[0]
    if arch in ARCHITECTURES:
        model = _load_bert(hf_config, arch, model_dir, device, dtype)
        limit, hidden = model.args.max_tokens, model.args.hidden_size
    elif arch in SUPPORTED_ARCHITECTURES:
        model = DecoderEncoder(hf_config, model_dir, device, dtype, config)
        limit, hidden = model.max_tokens, model.hidden_size
    else:
        raise ValueError(f"model architecture {arch} cannot embed; supported: "
                         + ", ".join(sorted([*ARCHITECTURES, *SUPPORTED_ARCHITECTURES])))
    pooling = read_pooling(model_dir, config.pooling)
    max_tokens = min(config.max_seq_length or pooling.max_seq_length or tokenizer.model_max_length, limit)
    if max_tokens > config.max_num_batched_tokens:
        raise ValueError(f"max_num_batched_tokens {config.max_num_batched_tokens} cannot hold one input of the "
                         f"model's {max_tokens} tokens; raise it")
    load_time = time.perf_counter() - started
    logger.info("embedding model %s (%s, %s on %s) ready in %.2f s: %s pooling%s, %d dimensions, inputs up to %d "
                "tokens", config.model, arch, str(dtype).removeprefix("torch."), device, load_time, pooling.mode,
                ", normalised" if pooling.normalize else "", hidden, max_tokens)
    return EncoderParts(model, tokenizer, pooling, max_tokens, hidden, hf_config.vocab_size, device, load_time)


def _load_bert(hf_config, arch: str, model_dir: Path, device: torch.device, dtype: torch.dtype) -> BertEncoder:
    with torch.device("meta"):  # skip random init: every weight is loaded from the checkpoint
        model = BertEncoder(BertArgs.from_hf_config(hf_config, arch))
    model = model.to(dtype).to_empty(device=device)
    model.load_weights(iter_weights(model_dir))
    model = model.eval().requires_grad_(False)
    if device.type == "cpu" and can_pack(dtype):
        pack_linears(model)
    return model
