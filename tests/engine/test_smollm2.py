"""SmolLM2-135M (the real built-in model): chat prompts of different lengths in one batch equal transformers."""
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tide.engine import LLM, SamplingParams
from tests.engine.hf_reference import compare_greedy, hf_greedy

MAX_NEW = 24

CHATS = [
    "Hi!",
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers and explain why each one is prime.",
    "Explain in two sentences what a paged KV cache is and why an inference engine would use one.",
    "Translate to French: The weather is lovely today, and we are going to walk along the river after lunch.",
    "You are a careful assistant. Summarize the following notes for a busy manager: the build broke twice this "
    "week because of a flaky network test; the team moved the test behind a retry; deployment is now green; the "
    "next release is planned for Thursday pending a security review of the new login flow.",
    "Give me a short recipe for pancakes. Include the ingredients with quantities, then the steps, numbered. "
    "Keep it under one hundred words, and mention one common mistake people make when flipping them, plus how "
    "to avoid it. Finally suggest two toppings that are not sweet.",
]


@pytest.fixture(scope="module")
def reference(smollm2_dir):
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    hf = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    eos = {tok.eos_token_id}
    prompts = [tok(tok.apply_chat_template([{"role": "user", "content": c}], add_generation_prompt=True,
                                           tokenize=False), add_special_tokens=False).input_ids for c in CHATS]
    assert len({len(p) for p in prompts}) == len(prompts)
    return smollm2_dir, prompts, [hf_greedy(hf, p, MAX_NEW, eos) for p in prompts]


@pytest.mark.slow
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
