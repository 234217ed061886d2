"""Tensor parallelism over 2 CPU ranks (gloo) gives the same greedy tokens as one rank, and fails fast."""
import os
import signal
import threading

import pytest

from tests.helpers.prompts import make_prompts
from tide.engine import LLM, SamplingParams
from tide.engine.parallel import group as tp_group

MAX_NEW = 12
PARAMS = SamplingParams(temperature=0.0, max_tokens=MAX_NEW, ignore_eos=True, logprobs=1)


def run_with_deadline(fn, seconds: float):
    """Run fn in a thread; fail the test instead of hanging the suite if it does not return in time."""
    result: dict = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as exc:  # handed to the test thread
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"did not finish in {seconds} s"
    if "error" in result:
        raise result["error"]
    return result["value"]


@pytest.fixture(autouse=True)
def short_timeouts(monkeypatch):
    monkeypatch.setattr(tp_group, "COLLECTIVE_TIMEOUT_S", 20.0)
    monkeypatch.setattr(tp_group, "READY_TIMEOUT_S", 60.0)


def test_two_ranks_match_one_and_a_dead_rank_fails_fast(tiny_model_dir):
    """4 query / 2 KV heads: each rank holds 2 query heads and 1 KV head (qwen2 adds sharded q/k/v biases).

    One engine serves both checks, since starting ranks is the slow part: first the tokens, then a killed rank.
    """
    model_dir = str(tiny_model_dir("qwen2"))
    prompts = make_prompts(49152)[:6]
    config = dict(model=model_dir, dtype="float32", max_num_batched_tokens=32)  # prefill chunks mixed with decodes
    expected = LLM(**config, num_threads=1).generate(prompts, PARAMS)
    tp = run_with_deadline(lambda: LLM(**config, tensor_parallel_size=2), 90)
    try:
        runner = tp.engine.runner
        assert runner.kv_cache.shape[-2] == 1  # rank 0 caches 1 of the 2 KV heads
        assert runner.model.layers[0].self_attn.num_heads == 2
        got = run_with_deadline(lambda: tp.generate(prompts, PARAMS), 60)
        assert [o.outputs[0].token_ids for o in got] == [o.outputs[0].token_ids for o in expected]
        for ours, ref in zip(got, expected):
            for a, b in zip(ours.outputs[0].logprobs, ref.outputs[0].logprobs):
                assert abs(a.logprob - b.logprob) < 1e-4

        beams = SamplingParams(use_beam_search=True, best_of=2, temperature=0.0, max_tokens=4)
        refused = run_with_deadline(lambda: tp.generate([[5, 6, 7]], beams), 30)[0]
        assert "tensor_parallel_size" in refused.error  # forks would copy KV blocks on rank 0 only

        worker = runner.group._processes[0]
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(10)
        with pytest.raises(RuntimeError, match=r"rank 1 \(exit code -9\) died"):
            run_with_deadline(lambda: tp.generate([[5, 6, 7]], PARAMS), 40)
    finally:
        tp.engine.close()


def test_indivisible_heads_are_refused(smollm2_dir):
    """SmolLM2 has 9 query and 3 KV heads: 2 ranks cannot split them, and no process is spawned to find out."""
    with pytest.raises(ValueError, match=r"9 query heads, 3 KV heads.*one of \[3\]"):
        LLM(model=str(smollm2_dir), tensor_parallel_size=2)
