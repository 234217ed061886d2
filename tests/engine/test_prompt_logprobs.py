"""Prompt logprobs equal transformers' log-softmax over the same prompt, in fp32, whatever the scheduling: whole
prefills, small chunks, prefix-cache hits on a shared context, preemption; `max_tokens=0` scores without sampling."""

import pytest
import torch
from pydantic import ValidationError
from transformers import AutoModelForCausalLM

from tests.helpers.models import kv_bytes_for
from tests.helpers.prompts import make_prompts
from tide.engine import LLM, SamplingParams

ATOL = 1e-4

MODES = {
    "default": dict(),
    "chunked": dict(max_num_batched_tokens=7),
    "no_prefix_cache": dict(enable_prefix_caching=False),
    "preempt": dict(kv_cache_bytes="tiny", max_num_batched_tokens=48),
}


@torch.inference_mode()
def hf_logprobs(hf, prompt: list[int]) -> torch.Tensor:
    """[len(prompt) - 1, vocab]: row t is the log-softmax predicting prompt token t + 1."""
    return hf(torch.tensor([prompt])).logits[0, :-1].float().log_softmax(dim=-1)


def assert_matches(entries, prompt: list[int], ref: torch.Tensor, start: int, k: int) -> None:
    assert len(entries) == len(prompt)
    assert all(e is None for e in entries[:max(start, 1)])
    for t in range(max(start, 1), len(prompt)):
        e = entries[t]
        assert e is not None and e.token_id == prompt[t], f"token {t}: {e}"
        assert abs(e.logprob - float(ref[t - 1, prompt[t]])) < ATOL, f"token {t}: {e.logprob} vs HF"
        assert len(e.top) == k
        for tid, value in e.top:
            assert abs(value - float(ref[t - 1, tid])) < ATOL


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny(request, tiny_model_dir):
    model_dir = tiny_model_dir(request.param)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompts = [p for p in make_prompts(hf.config.vocab_size) if len(p) > 1]
    return model_dir, prompts, [hf_logprobs(hf, p) for p in prompts]


@pytest.mark.parametrize("mode", list(MODES))
def test_every_prompt_token_matches_transformers(tiny, mode):
    model_dir, prompts, refs = tiny
    config = dict(MODES[mode])
    if config.get("kv_cache_bytes") == "tiny":
        config["kv_cache_bytes"] = kv_bytes_for(model_dir, 16 * 8)  # growing decodes must preempt
    llm = LLM(model=str(model_dir), dtype="float32", block_size=16, **config)
    params = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True, prompt_logprobs=3)
    outputs = llm.generate(prompts, params)
    for out, prompt, ref in zip(outputs, prompts, refs):
        assert_matches(out.prompt_logprobs, prompt, ref, 0, 3)
        assert len(out.outputs[0].token_ids) == 30  # scoring the prompt leaves generation as it was
    if mode == "preempt":
        assert llm.engine.stats.preemptions > 0


@pytest.mark.parametrize("chunk", [1024, 5])
def test_scoring_after_a_shared_context_reuses_its_cached_blocks(tiny, chunk):
    """Multiple choice: one context, four continuations scored from its end. The first request computes the
    context; the others take its full blocks from the prefix cache and still score every continuation token."""
    model_dir, _, _ = tiny
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    context = list(range(100, 150))  # 50 tokens: three full 16-token blocks
    prompts = [context + [200 + i] * (i + 1) + [7] for i in range(4)]
    llm = LLM(model=str(model_dir), dtype="float32", block_size=16, max_num_batched_tokens=chunk)
    params = SamplingParams(max_tokens=0, prompt_logprobs=1, prompt_logprobs_start=len(context))
    outputs = llm.generate(prompts, params)
    for out, prompt in zip(outputs, prompts):
        ref = hf_logprobs(hf, prompt)
        assert_matches(out.prompt_logprobs, prompt, ref, len(context), 1)
        continuation = sum(e.logprob for e in out.prompt_logprobs[len(context):])
        expected = sum(float(ref[t - 1, prompt[t]]) for t in range(len(context), len(prompt)))
        assert abs(continuation - expected) < ATOL
        assert out.outputs[0].token_ids == [] and out.finish_reason == "length"
    assert [o.metrics.cached_prompt_tokens for o in outputs] == [0, 48, 48, 48]


def test_the_positions_to_score_are_never_served_from_the_cache(tiny):
    """A prompt scored from token 0 computes every position, even when an earlier request cached its blocks."""
    model_dir, prompts, refs = tiny
    prompt, ref = prompts[-1], refs[-1]  # 40 tokens
    llm = LLM(model=str(model_dir), dtype="float32", block_size=16)
    llm.generate([prompt], SamplingParams(max_tokens=1))  # caches its first two blocks
    scored = llm.generate([prompt], SamplingParams(max_tokens=0, prompt_logprobs=0))[0]
    assert scored.metrics.cached_prompt_tokens == 0
    assert_matches(scored.prompt_logprobs, prompt, ref, 0, 0)
    from_20 = llm.generate([prompt], SamplingParams(max_tokens=0, prompt_logprobs=0, prompt_logprobs_start=20))[0]
    assert from_20.metrics.cached_prompt_tokens == 16  # the block before position 19, no further
    assert_matches(from_20.prompt_logprobs, prompt, ref, 20, 0)


def test_score_only_requests_mix_with_generating_ones(tiny):
    model_dir, prompts, _ = tiny
    llm = LLM(model=str(model_dir), dtype="float32", max_num_batched_tokens=16)
    gen = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    alone = llm.generate(prompts, gen)
    mixed = llm.generate(prompts + prompts, [gen] * len(prompts) + [SamplingParams(max_tokens=0)] * len(prompts))
    assert [o.token_ids for o in mixed[:len(prompts)]] == [o.token_ids for o in alone]
    assert all(o.token_ids == [] and o.prompt_logprobs is None for o in mixed[len(prompts):])


def test_bad_scoring_options_name_the_field(tiny):
    with pytest.raises(ValidationError, match="prompt_logprobs_start is only used with prompt_logprobs"):
        SamplingParams(prompt_logprobs_start=3)
    with pytest.raises(ValidationError, match="max_tokens=0 scores the prompt only"):
        SamplingParams(max_tokens=0, n=2)
    with pytest.raises(ValidationError, match="prompt_logprobs cannot be combined with use_beam_search"):
        SamplingParams(use_beam_search=True, prompt_logprobs=1, n=2)
    model_dir, _, _ = tiny
    llm = LLM(model=str(model_dir), dtype="float32")
    out = llm.generate([[5, 6, 7]], SamplingParams(max_tokens=0, prompt_logprobs=0, prompt_logprobs_start=3))[0]
    assert out.error == "prompt_logprobs_start (3) must be less than the prompt's 3 tokens"


def test_smollm2_continuations_sum_like_transformers(smollm2_dir):
    hf = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    llm = LLM(model=str(smollm2_dir), dtype="float32", max_num_batched_tokens=64)
    tok = llm.tokenizer
    context = "Question: Which planet is known as the red planet?\nAnswer:"
    n_context = len(tok(context).input_ids)
    prompts = [tok(context + choice).input_ids for choice in (" Mars", " Venus", " Jupiter", " the Moon")]
    params = SamplingParams(max_tokens=0, prompt_logprobs=1, prompt_logprobs_start=n_context)
    outputs = llm.generate(prompts, params)
    totals = []
    for out, prompt in zip(outputs, prompts):
        ref = hf_logprobs(hf, prompt)
        assert_matches(out.prompt_logprobs, prompt, ref, n_context, 1)
        totals.append(sum(e.logprob for e in out.prompt_logprobs[n_context:]))
        expected = sum(float(ref[t - 1, prompt[t]]) for t in range(n_context, len(prompt)))
        assert abs(totals[-1] - expected) < ATOL
    assert max(range(4), key=totals.__getitem__) == 0  # the model knows Mars
