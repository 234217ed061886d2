"""Tide's inference engine: paged KV cache, continuous batching, offline `LLM.generate`.

Names are imported lazily, so `from tide.engine.sampling_params import SamplingParams` (used by the job and API side)
does not pull in torch and the model code.
"""
from importlib import import_module

_EXPORTS = {
    "LLM": "tide.engine.llm",
    "LLMEngine": "tide.engine.llm_engine",
    "EngineStats": "tide.engine.stats",
    "EngineConfig": "tide.engine.config",
    "SamplingParams": "tide.engine.sampling_params",
    "RequestOutput": "tide.engine.outputs",
    "CompletionOutput": "tide.engine.outputs",
    "RequestMetrics": "tide.engine.outputs",
    "TokenLogprob": "tide.engine.outputs",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
