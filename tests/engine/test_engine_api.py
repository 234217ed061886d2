"""The engine's request-level behaviour on a tiny model: stops, n > 1, seeds, aborts, errors, threads, metrics."""
import threading

import pytest
from pydantic import ValidationError

from tide.engine import LLM, EngineConfig, LLMEngine, SamplingParams

PROMPTS = [[5, 17, 300, 4000, 12], [9, 9, 9], list(range(100, 140)), [42]]


@pytest.fixture(scope="module")
def llm(tiny_model_dir):
    return LLM(model=str(tiny_model_dir("llama")), dtype="float32")


def greedy(max_tokens=10, **kw):
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, **kw)


def test_max_tokens_gives_length_and_metrics(llm):
    out = llm.generate(PROMPTS, greedy(7))
    for o, prompt in zip(out, PROMPTS):
        assert o.finish_reason == "length" and len(o.token_ids) == 7
        m = o.metrics
        assert m.prompt_tokens == len(prompt) and m.completion_tokens == 7
        assert 0 <= m.queue_time <= m.ttft <= m.e2e_latency and m.tpot > 0


def test_stop_token_id_and_stop_string(llm):
    base = llm.generate(PROMPTS[:1], greedy(10))[0]
    stop_tok = base.token_ids[4]
    first = base.token_ids.index(stop_tok)
    out = llm.generate(PROMPTS[:1], greedy(10, stop_token_ids=[stop_tok]))[0]
    assert out.finish_reason == "stop" and out.outputs[0].stop_reason == stop_tok
    assert out.token_ids == base.token_ids[:first + 1]
    text = base.text
    stop = text[len(text) // 2:len(text) // 2 + 3]
    assert stop.strip()
    out = llm.generate(PROMPTS[:1], greedy(10, stop=[stop]))[0]
    assert out.finish_reason == "stop" and out.outputs[0].stop_reason == stop
    assert out.text == text[:text.index(stop)] and stop not in out.text


def test_n_samples_share_the_prompt_blocks(llm):
    params = SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=8, ignore_eos=True)
    hits_before = llm.engine.block_manager.prefix_hits
    out = llm.generate([PROMPTS[2]], params)[0]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert all(len(c.token_ids) == 8 for c in out.outputs)
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1  # different samples
    # samples 1 and 2 reused the 2 full blocks (32 tokens) of the 40-token prompt computed by sample 0
    assert llm.engine.block_manager.prefix_hits - hits_before >= 2 * 32
    assert out.metrics.completion_tokens == 24


def test_seeded_sampling_is_independent_of_batch(llm):
    params = SamplingParams(temperature=0.9, top_p=0.9, seed=1234, max_tokens=12, ignore_eos=True)
    alone = llm.generate([PROMPTS[0]], params)[0].token_ids
    noisy = [SamplingParams(temperature=1.0, max_tokens=5, ignore_eos=True)] * 3
    batch = llm.generate([PROMPTS[1], PROMPTS[0], PROMPTS[2], PROMPTS[3]], [noisy[0], params, noisy[1], noisy[2]])
    assert batch[1].token_ids == alone


def test_prompt_too_long_fails_alone(tiny_model_dir):
    llm = LLM(model=str(tiny_model_dir("llama")), dtype="float32", max_model_len=64)
    out = llm.generate([list(range(10, 90)), PROMPTS[0]], greedy(5))
    assert out[0].finish_reason == "error" and "80 tokens" in out[0].error
    assert out[1].finish_reason == "length" and len(out[1].token_ids) == 5
    # a sequence that reaches the context limit stops with "length"
    out = llm.generate([list(range(10, 60))], SamplingParams(temperature=0, ignore_eos=True))[0]
    assert out.finish_reason == "length" and len(out.prompt_token_ids) + len(out.token_ids) == 64


def test_invalid_params_name_the_field(llm):
    with pytest.raises(ValidationError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(ValidationError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="stop_token_ids"):
        llm.engine.add_request("bad", [1, 2], SamplingParams(stop_token_ids=[10**9]))
    with pytest.raises(ValueError, match="vocabulary"):
        llm.engine.add_request("bad2", [10**9], SamplingParams())


def test_abort_and_duplicate_ids(tiny_model_dir):
    engine = LLMEngine(EngineConfig(model=str(tiny_model_dir("llama")), dtype="float32"))
    engine.add_request("a", PROMPTS[0], greedy(50))
    engine.add_request("b", PROMPTS[1], greedy(3))
    with pytest.raises(ValueError, match="already"):
        engine.add_request("a", PROMPTS[0], greedy(5))
    engine.step()
    engine.abort("a")
    done = {}
    while engine.has_unfinished():
        for out in engine.step():
            done[out.request_id] = out
    assert done["a"].finish_reason == "abort" and len(done["a"].token_ids) < 50
    assert done["b"].finish_reason == "length"
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_thread_safe_intake_while_a_loop_steps(tiny_model_dir):
    engine = LLMEngine(EngineConfig(model=str(tiny_model_dir("llama")), dtype="float32"))
    done, stop = {}, threading.Event()

    def loop():
        while not stop.is_set() or engine.has_unfinished():
            for out in engine.step():
                done[out.request_id] = out

    def producer(k):
        for i in range(10):
            engine.add_request(f"{k}-{i}", [k + 3, i + 3, 7], greedy(4))

    runner = threading.Thread(target=loop)
    runner.start()
    producers = [threading.Thread(target=producer, args=(k,)) for k in range(4)]
    for t in producers:
        t.start()
    for t in producers:
        t.join()
    stop.set()
    runner.join(timeout=60)
    assert sorted(done) == sorted(f"{k}-{i}" for k in range(4) for i in range(10))
    assert all(len(o.token_ids) == 4 for o in done.values())


def test_text_and_chat_prompts(llm):
    out = llm.generate(["Hello there", [{"role": "user", "content": "Hi"}]], greedy(4))
    tok = llm.tokenizer
    assert out[0].prompt_token_ids == tok("Hello there").input_ids
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    assert out[1].prompt_token_ids == tok(chat, add_special_tokens=False).input_ids
    assert all(len(o.token_ids) == 4 and isinstance(o.text, str) for o in out)


def test_logprobs_on_request(llm):
    out = llm.generate([PROMPTS[0]], greedy(3, logprobs=3))[0]
    lps = out.outputs[0].logprobs
    assert len(lps) == 3 and all(len(lp.top) == 3 for lp in lps)
    assert all(lp.token_id == tok for lp, tok in zip(lps, out.token_ids))
    assert all(lp.top[0][0] == lp.token_id for lp in lps)  # greedy picks the top token


def test_priority_order_when_one_at_a_time(tiny_model_dir):
    llm = LLM(model=str(tiny_model_dir("llama")), dtype="float32", max_num_seqs=1)
    out = llm.generate([PROMPTS[0], PROMPTS[1], PROMPTS[3]], greedy(3), priorities=[0, 5, 1])
    order = sorted(range(3), key=lambda i: out[i].metrics.first_token_time)
    assert order == [1, 2, 0]
