"""SmolLM2-135M (the real built-in model): chat prompts of different lengths in one batch equal transformers."""
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.helpers.hf_reference import compare_greedy, hf_greedy
from tests.helpers.prompts import CHATS
from tide.engine import LLM, SamplingParams

MAX_NEW = 24




@pytest.fixture(scope="module")
def reference(smollm2_dir):
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    hf = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    eos = {tok.eos_token_id}
    prompts = [tok(tok.apply_chat_template([{"role": "user", "content": c}], add_generation_prompt=True,
                                           tokenize=False), add_special_tokens=False).input_ids for c in CHATS]
    assert len({len(p) for p in prompts}) == len(prompts)
    return smollm2_dir, prompts, [hf_greedy(hf, p, MAX_NEW, eos) for p in prompts]


@pytest.mark.parametrize("mode", ["default", "chunked", "no_prefix_cache", "preempt"])
def test_smollm2_chat_batch_matches_transformers(reference, mode):
    model_dir, prompts, refs = reference
    config = {"default": {}, "chunked": {"max_num_batched_tokens": 24},
              "no_prefix_cache": {"enable_prefix_caching": False},
              # 46080 bytes per token in fp32: 12 blocks of 16 tokens cannot hold 8 sequences at once (without
              # prefix caching, which would let them share the chat template's system prompt).
              "preempt": {"kv_cache_bytes": 46080 * 16 * 12, "enable_prefix_caching": False}}[mode]
    llm = LLM(model=str(model_dir), dtype="float32", **config)
    messages = [[{"role": "user", "content": c}] for c in CHATS]
    outputs = llm.generate(messages, SamplingParams(temperature=0.0, max_tokens=MAX_NEW, logprobs=5))
    assert [o.prompt_token_ids for o in outputs] == prompts  # the chat template went through the tokenizer
    flips = sum(compare_greedy(out, *ref) for out, ref in zip(outputs, refs))
    print(f"[{mode}] near-tie flips tolerated: {flips} of {len(prompts)}")
    assert flips <= 2
    if mode == "preempt":
        assert llm.engine.stats.preemptions > 0
    for out in outputs:
        assert out.finish_reason in ("stop", "length") and out.text


def test_rows_that_read_only_their_argmax_take_the_screened_head(reference, monkeypatch):
    """Greedy rows without logprobs go through the vocabulary head's bf16 screen where the CPU has one
    (kernels.native_linear.ArgmaxScreen); their tokens are those of the full fp32 head (rows asking for logprobs),
    which match transformers."""
    model_dir, _, refs = reference
    llm = LLM(model=str(model_dir), dtype="float32")
    head = llm.engine.runner.model.lm_head
    screened = getattr(head, "screen", None) is not None
    calls = []
    if screened:
        argmax_logits = head.argmax_logits
        monkeypatch.setattr(head, "argmax_logits", lambda x: calls.append(len(x)) or argmax_logits(x))
    messages = [[{"role": "user", "content": c}] for c in CHATS]
    plain = llm.generate(messages, SamplingParams(temperature=0.0, max_tokens=MAX_NEW))
    steps = len(calls)
    scored = llm.generate(messages, SamplingParams(temperature=0.0, max_tokens=MAX_NEW, logprobs=1))
    assert [o.outputs[0].token_ids for o in plain] == [o.outputs[0].token_ids for o in scored]
    assert sum(compare_greedy(out, *ref) for out, ref in zip(scored, refs)) <= 2
    if screened:
        assert steps >= MAX_NEW and len(calls) == steps  # every step of the first run, none of the second
