"""Guided decoding: every output matches its schema, regex or choice, on a random model that would otherwise write
garbage; fast-forward changes the number of steps, never the output."""
import json
import re

import jsonschema
import pytest
import torch

from tide.engine import LLM, SamplingParams
from tide.engine.decoding.token_bitmask import allow_only_, apply_token_bitmask_, bitmask_words


def strict(properties: dict, required: list[str] | None = None) -> dict:
    return {"type": "object", "properties": properties, "required": required or list(properties),
            "additionalProperties": False}


NAME = {"type": "string", "maxLength": 10}
SCHEMAS = [
    strict({"name": NAME, "age": {"type": "integer", "minimum": 0, "maximum": 120}}),
    strict({"color": {"enum": ["red", "green", "blue"]}, "ok": {"type": "boolean"}}),
    {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 1, "maxItems": 4},
    strict({"user": strict({"id": {"type": "integer", "minimum": 1, "maximum": 999}, "admin": {"type": "boolean"}}),
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3}}),
    strict({"score": {"type": "number", "minimum": 0, "maximum": 1}, "label": NAME, "note": NAME}, ["score"]),
]
REGEX = "[0-9]{3}-[a-z]{2,4}"
CHOICES = ["yes", "no", 'say "maybe"\\n']
# Long fixed keys: most of the output is forced.
LONG_KEYS = strict({"customer_account_identifier": {"type": "integer", "minimum": 0, "maximum": 99},
                    "shipping_address_postal_code": NAME, "preferred_delivery_window": {"enum": ["am", "pm"]}})


@pytest.fixture(scope="module")
def llm(tiny_model_dir):
    return LLM(str(tiny_model_dir("llama")), dtype="float32", device="cpu", kv_cache_bytes=32 << 20)


def guided(kind: str, value, **sampling) -> SamplingParams:
    return SamplingParams(guided={kind: value}, **{"max_tokens": 120, "temperature": 0.0, **sampling})


def check(output, params: SamplingParams) -> None:
    """The completion finished on its own and matches the request's constraint."""
    g = params.guided
    assert output.finish_reason == "stop", output
    if g.json_schema is not None:
        jsonschema.validate(json.loads(output.text), g.json_schema)
    elif g.regex is not None:
        assert re.fullmatch(g.regex, output.text), output.text
    else:
        assert output.text in g.choice


def test_hundred_rows_of_assorted_constraints_all_validate(llm):
    constraints = [("json_schema", s) for s in SCHEMAS] + [("regex", REGEX), ("choice", CHOICES)]
    params = []
    for i in range(100):
        kind, value = constraints[i % len(constraints)]
        sampling = {} if i % 2 else {"temperature": 1.0, "seed": i}  # greedy and sampled rows alike
        params.append(guided(kind, value, **sampling))
    compiled_before = llm.engine.guided.num_compiled
    outputs = llm.generate([f"row {i}: answer" for i in range(100)], params)
    for out, p in zip(outputs, params):
        check(out.outputs[0], p)
    assert llm.engine.guided.num_compiled - compiled_before <= len(constraints)  # once per constraint, not per row
    assert len({o.text for o in outputs}) > 20  # the model still chooses where the grammar lets it


def run_both(llm, prompts, **sampling) -> tuple[list, list, int, int]:
    """Outputs with and without fast-forward, and the engine steps each took."""
    results = []
    for fast_forward in (True, False):
        params = SamplingParams(guided={"json_schema": LONG_KEYS, "fast_forward": fast_forward},
                                **{"max_tokens": 120, "temperature": 0.0, **sampling})
        steps = llm.engine.stats.num_steps
        results.append((llm.generate(prompts, params), llm.engine.stats.num_steps - steps))
    (fast, fast_steps), (slow, slow_steps) = results
    return fast, slow, fast_steps, slow_steps


def same(a, b) -> None:
    for x, y in zip(a, b):
        assert [(o.text, o.token_ids, o.finish_reason, o.stop_reason) for o in x.outputs] == \
               [(o.text, o.token_ids, o.finish_reason, o.stop_reason) for o in y.outputs]


def test_fast_forward_gives_the_same_output_in_fewer_steps(llm):
    prompts = ["Describe the order.", "x", "The customer asked for a delivery in the morning, please"]
    forced = llm.engine.stats.guided_forced_tokens
    fast, slow, fast_steps, slow_steps = run_both(llm, prompts)
    same(fast, slow)
    for out in fast:
        check(out.outputs[0], guided("json_schema", LONG_KEYS))
    assert llm.engine.stats.guided_forced_tokens - forced >= 3 * 15
    assert fast_steps < slow_steps / 2


def test_fast_forward_honours_stop_strings_and_max_tokens_inside_forced_text(llm):
    fast, slow, _, _ = run_both(llm, ["a", "b"], stop=["postal"])
    same(fast, slow)
    assert all(o.text.endswith('"shipping_address_') and o.finish_reason == "stop" for o in fast)
    fast, slow, _, _ = run_both(llm, ["a"], max_tokens=6)
    same(fast, slow)
    assert fast[0].finish_reason == "length" and len(fast[0].token_ids) == 6


def test_preempted_sequences_keep_their_grammar_in_step(tiny_model_dir, llm):
    """A KV cache of 10 blocks makes the batch preempt and recompute: the matchers follow the kept output tokens."""
    prompts = [f"order number {i} " * (i + 1) for i in range(4)]
    kv_bytes = 10 * 16 * 2 * 2 * 2 * 16 * 4  # 10 blocks of 16 tokens: k and v, 2 layers, 2 kv heads of 16, fp32
    small = LLM(str(tiny_model_dir("llama")), dtype="float32", device="cpu", kv_cache_bytes=kv_bytes)
    fast, slow, _, _ = run_both(small, prompts)
    assert small.engine.stats.preemptions > 0
    same(fast, slow)
    same(fast, llm.generate(prompts, guided("json_schema", LONG_KEYS)))


def test_n_samples_and_logprobs(llm):
    params = guided("json_schema", SCHEMAS[0], n=3, temperature=1.0, seed=5, logprobs=2)
    forced = llm.engine.stats.guided_forced_tokens
    out = llm.generate(["tell me"], params)[0]
    assert len(out.outputs) == 3
    for sample in out.outputs:
        check(sample, params)
        assert len(sample.logprobs) == len(sample.token_ids)  # every token sampled, so every token has its logprob
        assert [lp.token_id for lp in sample.logprobs] == sample.token_ids
    assert llm.engine.stats.guided_forced_tokens == forced


def test_logprobs_describe_the_model_not_the_mask(llm):
    sample = llm.generate(["is it?"], guided("choice", ["yes", "no"], logprobs=3))[0].outputs[0]
    first = sample.logprobs[0]
    assert sample.text in ("yes", "no")
    # the random model prefers other tokens; the grammar overrode it, and the logprob says so
    assert first.logprob < first.top[0][1] and first.token_id not in [t for t, _ in first.top]


def test_schemas_differing_in_key_order_are_different_grammars(llm):
    one = strict({"a": {"type": "boolean"}, "b": {"type": "boolean"}})
    other = strict({"b": {"type": "boolean"}, "a": {"type": "boolean"}})
    texts = [o.text for o in llm.generate(["x", "x"], [guided("json_schema", one), guided("json_schema", other)])]
    assert [list(json.loads(t)) for t in texts] == [["a", "b"], ["b", "a"]]


def test_bad_constraints_fail_alone_naming_the_field(llm):
    good = guided("choice", ["yes", "no"])
    outs = llm.generate(["a", "b", "c"], [guided("json_schema", {"type": "strnig"}), good, guided("regex", "a(b")])
    assert outs[0].error.startswith("guided.json_schema: cannot be compiled") and "strnig" in outs[0].error
    assert outs[0].finish_reason == "error"
    assert outs[2].error.startswith("guided.regex:") and "unclosed group" in outs[2].error
    check(outs[1].outputs[0], good)


def test_abort_a_guided_request(llm):
    engine = llm.engine
    engine.add_request("guided-abort", "hello", guided("json_schema", LONG_KEYS, max_tokens=None))
    engine.step()
    engine.abort("guided-abort")
    done = []
    while engine.has_unfinished():
        done += engine.step()
    assert [(o.request_id, o.finish_reason) for o in done] == [("guided-abort", "abort")]


def test_bitmask_allows_exactly_the_marked_tokens():
    vocab = 70
    bitmask = torch.full((2, bitmask_words(vocab)), -1, dtype=torch.int32)
    allow_only_(bitmask, 1, 63)  # bit 31 of a word: int32's sign bit
    logits = torch.zeros(2, vocab)
    apply_token_bitmask_(logits, bitmask)
    assert torch.isfinite(logits[0]).all()
    assert torch.isfinite(logits[1]).nonzero().flatten().tolist() == [63]


def test_guided_rows_beside_speculated_rows_keep_their_grammar_and_the_others_their_tokens(tiny_model_dir):
    """A speculating engine drafts for the plain greedy row only; in the verifying forward the guided rows still
    get their masks, and the plain rows the same tokens as without speculation."""
    path = str(tiny_model_dir("llama"))
    repeating = [11, 12, 13, 14] * 8
    params = [guided("json_schema", SCHEMAS[0]), SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True),
              guided("regex", REGEX)]
    prompts = [repeating] * 3
    plain = LLM(path, dtype="float32", device="cpu", kv_cache_bytes=32 << 20).generate(prompts, params)
    speculating = LLM(path, dtype="float32", device="cpu", kv_cache_bytes=32 << 20, speculative="draft",
                      draft_model=path, spec_max_running=64)  # drafting for itself: every draft is accepted
    outputs = speculating.generate(prompts, params)
    assert speculating.engine.stats.spec_proposed_tokens > 0
    check(outputs[0].outputs[0], params[0])
    check(outputs[2].outputs[0], params[2])
    assert [o.outputs[0].token_ids for o in outputs] == [o.outputs[0].token_ids for o in plain]
