"""What the engine builds once at start: device and dtype, the model with its weights, and the KV budget."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import torch

from tide.engine.block_manager import BlockManager
from tide.engine.config import EngineConfig
from tide.engine.loader import load_config, load_tokenizer, resolve_model
from tide.engine.lora.registry import LoraRegistry, NoAdapters, build_registry
from tide.engine.model_loading import load_model
from tide.engine.model_runner import ModelRunner
from tide.engine.sampler import Sampler

logger = logging.getLogger("tide.engine")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class EngineParts:
    tokenizer: object
    max_model_len: int
    eos_token_ids: set[int]
    block_manager: BlockManager
    runner: ModelRunner
    sampler: Sampler
    adapters: LoraRegistry | NoAdapters
    vocab_size: int
    load_time_s: float


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA GPU")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto: bfloat16 on CUDA and on CPUs with native bf16 (3x faster matmuls there), float32 elsewhere."""
    if name != "auto":
        if device.type == "cpu" and name == "float16":
            logger.warning("float16 matmuls are very slow on CPUs; bfloat16 or float32 is a better choice")
        return _DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16
    return torch.bfloat16 if _cpu_has_bf16() else torch.float32


def _cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def free_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("cannot read available memory from /proc/meminfo; set kv_cache_bytes explicitly")


def build_engine_parts(config: EngineConfig) -> EngineParts:
    started = time.perf_counter()
    model_dir = resolve_model(config.model, quantization=config.quantization)
    hf_config = load_config(model_dir)
    tokenizer = load_tokenizer(model_dir)
    device = pick_device(config.device)
    dtype = pick_dtype(config.dtype, device)
    tp = config.tensor_parallel_size
    num_threads = config.num_threads or max(1, (os.cpu_count() or 1) // tp)  # per rank: the ranks share the cores
    if device.type == "cpu":
        torch.set_num_threads(num_threads)
    group = None
    if tp > 1:
        from tide.engine.parallel import TensorParallelGroup

        group = TensorParallelGroup.start(config, model_dir, hf_config, device, dtype, num_threads)
    try:
        model = load_model(hf_config, model_dir, device, dtype, shard=group.shard if group else None,
                           max_resident_layers=config.offload_max_resident_layers,
                           quantization=config.quantization)
        args = model.args
        max_model_len = min(config.max_model_len or args.max_position_embeddings,
                            args.max_position_embeddings, args.sliding_window or args.max_position_embeddings)
        num_blocks = _num_kv_blocks(config, model, device, dtype, max_model_len)
        adapters = build_registry(config, model, device, dtype)
        runner = _make_runner(group, model, num_blocks, config.block_size, max_model_len, device, dtype, adapters)
    except BaseException:
        if group is not None:
            group.close()
        raise
    load_time = time.perf_counter() - started
    tokens = num_blocks * config.block_size
    logger.info("model %s (%s, %s on %s) ready in %.2f s; KV cache %d blocks = %d tokens (%.2f GiB), "
                "%.1f sequences of full context (%d tokens)", config.model, hf_config.architectures[0],
                str(dtype).removeprefix("torch."), device, load_time, num_blocks, tokens,
                runner.kv_cache.numel() * runner.kv_cache.element_size() / 2**30, tokens / max_model_len,
                max_model_len)
    return EngineParts(
        tokenizer=tokenizer,
        max_model_len=max_model_len,
        eos_token_ids=_eos_token_ids(model_dir, hf_config, tokenizer),
        block_manager=BlockManager(num_blocks, config.block_size, config.enable_prefix_caching),
        runner=runner,
        sampler=Sampler(argmax=model.ops.argmax),
        adapters=adapters,
        vocab_size=args.vocab_size,
        load_time_s=load_time,
    )


def _make_runner(group, model, num_blocks: int, block_size: int, max_model_len: int, device: torch.device,
                 dtype: torch.dtype, adapters: LoraRegistry | NoAdapters) -> ModelRunner:
    if group is None:
        return ModelRunner(model, num_blocks, block_size, max_model_len, device, dtype, adapters)
    from tide.engine.parallel.runner import TensorParallelRunner

    group.start_workers(num_blocks, max_model_len)
    return TensorParallelRunner(group, model, num_blocks, block_size, max_model_len, device, dtype)


def _num_kv_blocks(config: EngineConfig, model, device: torch.device, dtype: torch.dtype, max_model_len: int) -> int:
    block_bytes = ModelRunner.kv_bytes_per_token(model, dtype) * config.block_size
    budget = config.kv_cache_bytes
    if budget is None:
        budget = int(free_memory_bytes(device) * config.kv_cache_fraction)
        # More than every sequence at full context can never be used; don't reserve it.
        budget = min(budget, config.max_num_seqs * -(-max_model_len // config.block_size) * block_bytes)
    num_blocks = budget // block_bytes
    if num_blocks < 1:
        raise ValueError(f"KV cache budget of {budget} bytes holds no block ({block_bytes} bytes per block of "
                         f"{config.block_size} tokens); raise kv_cache_bytes or kv_cache_fraction")
    return num_blocks


def _eos_token_ids(model_dir, hf_config, tokenizer) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(hf_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(source)
    gen_config = model_dir / "generation_config.json"
    if gen_config.exists():
        from transformers import GenerationConfig

        eos = GenerationConfig.from_pretrained(model_dir).eos_token_id
        ids.update([eos] if isinstance(eos, int) else (eos or []))
    return ids
