"""The engine's greedy outputs equal transformers' on tiny random models, in every scheduling mode."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.helpers.hf_reference import compare_greedy, hf_greedy
from tests.helpers.models import kv_bytes_for
from tests.helpers.prompts import make_prompts
from tide.engine import LLM, SamplingParams
from tide.kernels import native, torch_ops

MAX_NEW = 20

# Modes the batch must survive with identical results: default, tiny prefill chunks, no prefix cache, and a KV
# budget so small that sequences must be preempted and recomputed.
MODES = {
    "default": dict(),
    "chunked": dict(max_num_batched_tokens=7),
    "no_prefix_cache": dict(enable_prefix_caching=False),
    "preempt": dict(kv_cache_bytes="tiny"),
}


@pytest.fixture(scope="module", params=["llama", "qwen2", "qwen3"])
def reference(request, tiny_model_dir):
    model_dir = tiny_model_dir(request.param)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompts = make_prompts(hf.config.vocab_size)
    refs = [hf_greedy(hf, p, MAX_NEW) for p in prompts]
    distinct = {t for tokens, _ in refs for t in tokens}
    assert len(distinct) > 5, "tiny model is degenerate: raise initializer_range"
    return model_dir, prompts, refs


def _twin_must_not_run(*args, **kwargs):
    raise AssertionError("the PyTorch twin ran although the native paged attention was available")


@pytest.mark.parametrize("mode", list(MODES))
def test_greedy_matches_transformers(reference, mode, monkeypatch):
    """On CPU with a compiler, every attention call of these runs goes through the native kernel."""
    model_dir, prompts, refs = reference
    config = dict(MODES[mode])
    if config.get("kv_cache_bytes") == "tiny":
        config["kv_cache_bytes"] = kv_bytes_for(model_dir, 16 * 6)  # 6 blocks: growing decodes must preempt
    monkeypatch.delenv("TIDE_KERNELS", raising=False)
    native_available = native.load() is not None
    if native_available:
        monkeypatch.setattr(torch_ops, "paged_attention", _twin_must_not_run)
    llm = LLM(model=str(model_dir), dtype="float32", block_size=16, **config)
    assert llm.engine.runner.model.ops.backend == ("native" if native_available else "torch")
    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW, ignore_eos=True, logprobs=5)
    outputs = llm.generate(prompts, params)
    flips = sum(compare_greedy(out, *ref) for out, ref in zip(outputs, refs))
    assert flips <= 1, f"{flips} near-tie flips in one batch"
    stats = llm.engine.stats
    if mode == "preempt":
        assert stats.preemptions > 0
    if mode == "default":
        # The three prompts sharing 40 tokens: the later two waited for the first one's prefill, then hit.
        assert stats.prefix_cache_hit_rate > 0
        # The same prompts again are served from the cache and give the same tokens.
        again = llm.generate(prompts, params)
        assert llm.engine.stats.prefix_cache_hit_rate > 0.4
        assert [o.token_ids for o in again] == [o.token_ids for o in outputs]
    if mode == "no_prefix_cache":
        assert stats.prefix_cache_hit_rate == 0
    assert llm.engine.block_manager.num_free_blocks == llm.engine.block_manager.num_blocks
