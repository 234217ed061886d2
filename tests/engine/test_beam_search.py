"""Beam search returns what transformers' `generate(num_beams=...)` returns, and gives every KV block back."""
import random
from collections import Counter

import pytest
import torch
from pydantic import ValidationError
from transformers import AutoModelForCausalLM

from tests.helpers.models import kv_bytes_for
from tide.engine import LLM, SamplingParams
from tide.engine.block_manager import BlockManager
from tide.engine.sequence import Sequence

MAX_NEW = 12
EOS = 2  # SmolLM2's tokenizer, shared by the tiny models

# (beam width, beams returned, length_penalty, early_stopping, min_tokens)
CASES = [
    (2, 2, 1.0, False, 0),
    (4, 3, 0.5, True, 0),
    (3, 1, 2.0, "never", 0),
    (4, 4, -1.0, False, 0),
    (3, 2, 1.0, "never", 3),
    (5, 2, 0.0, True, 2),
]


def hf_beams(hf, prompt: list[int], width: int, n: int, length_penalty: float, early_stopping, min_tokens: int,
             stop_ids: list[int], max_new: int = MAX_NEW) -> tuple[list[list[int]], list[float]]:
    """transformers' returned beams (padding after the stop token removed) and their scores."""
    out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                      num_beams=width, do_sample=False, length_penalty=length_penalty, early_stopping=early_stopping,
                      num_return_sequences=n, max_new_tokens=max_new, min_new_tokens=min_tokens,
                      eos_token_id=stop_ids, pad_token_id=EOS, output_scores=True, return_dict_in_generate=True)
    beams = []
    for row in out.sequences[:, len(prompt):].tolist():
        end = next((i + 1 for i, t in enumerate(row) if t in stop_ids), len(row))
        beams.append(row[:end])
    return beams, out.sequences_scores.tolist()


def assert_blocks_released(llm: LLM) -> None:
    bm = llm.engine.block_manager
    assert all(block.ref_count == 0 for block in bm.blocks)
    assert bm.num_free_blocks == bm.num_blocks
    assert not llm.engine.scheduler.has_unfinished() and not llm.engine.beam_search.groups


@pytest.fixture(scope="module")
def setup(tiny_model_dir):
    model_dir = tiny_model_dir("llama")
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    rng = random.Random(1)
    prompts = [[rng.randrange(3, hf.config.vocab_size) for _ in range(n)] for n in (7, 33)]
    llm = LLM(model=str(model_dir), dtype="float32", block_size=16)
    # Stop tokens the beams like early on, so that beams finish before the length limit.
    free = llm.generate(prompts, SamplingParams(use_beam_search=True, best_of=4, n=4, max_tokens=MAX_NEW))
    counts = Counter(t for out in free for comp in out.outputs for t in comp.token_ids[1:5])
    stop_ids = [t for t, _ in counts.most_common(4)]
    return model_dir, hf, prompts, llm, stop_ids


def _params(width, n, length_penalty, early_stopping, min_tokens, stop_ids, **extra) -> SamplingParams:
    return SamplingParams(use_beam_search=True, best_of=width, n=n, length_penalty=length_penalty,
                          early_stopping=early_stopping, min_tokens=min_tokens, max_tokens=MAX_NEW,
                          stop_token_ids=stop_ids, **extra)


def _check(outputs, hf, prompts, case, stop_ids) -> list[str]:
    reasons = []
    for prompt, out in zip(prompts, outputs):
        ref, ref_scores = hf_beams(hf, prompt, *case, [EOS] + stop_ids)
        assert [c.token_ids for c in out.outputs] == ref, f"case {case}, prompt of {len(prompt)} tokens"
        length_penalty = case[2]
        scores = [c.cumulative_logprob / len(c.token_ids) ** length_penalty for c in out.outputs]
        assert scores == pytest.approx(ref_scores, rel=1e-3, abs=1e-3)
        assert [c.index for c in out.outputs] == list(range(case[1]))
        reasons += [c.finish_reason for c in out.outputs]
    return reasons


def test_beams_match_transformers(setup):
    """Several widths, length penalties, early-stopping modes and min_tokens, three prompts batched together."""
    _, hf, prompts, llm, stop_ids = setup
    reasons = []
    for case in CASES:
        outputs = llm.generate(prompts, _params(*case, stop_ids))
        reasons += _check(outputs, hf, prompts, case, stop_ids)
        assert_blocks_released(llm)
    assert "stop" in reasons and "length" in reasons, "no beam reached a stop token: pick other stop tokens"


@pytest.mark.parametrize("early_stopping", [True, False])
def test_a_group_ends_early_on_stop_tokens(setup, early_stopping):
    """The first prompt's three likeliest first tokens are stop tokens: its three beams finish at once (with
    early_stopping=True the search ends there) while the other prompt's group goes on."""
    _, hf, prompts, llm, _ = setup
    with torch.inference_mode():
        stops = hf(torch.tensor([prompts[0]])).logits[0, -1].topk(3).indices.tolist()
    case = (3, 3, 1.0, early_stopping, 0)
    outputs = llm.generate(prompts, _params(*case, stops))
    _check(outputs, hf, prompts, case, stops)
    first = outputs[0].outputs
    if early_stopping:
        assert [(c.finish_reason, len(c.token_ids)) for c in first] == [("stop", 1)] * 3
    assert any(c.finish_reason == "length" for c in outputs[1].outputs)
    assert_blocks_released(llm)


def test_beams_survive_preemption_and_chunking(setup):
    """Two groups whose beams cross block boundaries at once, in a cache that holds either group but not both:
    beams are preempted, and their siblings wait for them (holding their blocks) until they are recomputed; forks
    find no free block and recompute their partial block. The beams do not change."""
    model_dir, hf, _, _, _ = setup
    rng = random.Random(2)
    prompts = [[rng.randrange(3, hf.config.vocab_size) for _ in range(n)] for n in (14, 30)]
    llm = LLM(model=str(model_dir), dtype="float32", block_size=16, max_num_batched_tokens=16,
              kv_cache_bytes=kv_bytes_for(model_dir, 16 * 9))
    case = (4, 2, 1.0, False, 0)
    outputs = llm.generate(prompts, _params(*case, []))
    _check(outputs, hf, prompts, case, [])
    assert llm.engine.stats.preemptions > 0
    assert_blocks_released(llm)


def test_without_block_sharing_same_beams(setup):
    """The measuring switch (forks copy every block) changes memory use, not results."""
    _, _, prompts, llm, stop_ids = setup
    params = _params(4, 2, 1.0, False, 0, stop_ids)
    shared = llm.generate(prompts, params)
    llm.engine.beam_search.share_blocks = False
    try:
        copied = llm.generate(prompts, params)
    finally:
        llm.engine.beam_search.share_blocks = True
    assert [[(c.token_ids, c.cumulative_logprob) for c in o.outputs] for o in copied] == \
        [[(c.token_ids, c.cumulative_logprob) for c in o.outputs] for o in shared]
    assert_blocks_released(llm)


def test_beams_with_logprobs_and_abort(setup):
    _, _, prompts, llm, _ = setup
    params = SamplingParams(use_beam_search=True, best_of=3, n=2, max_tokens=MAX_NEW, logprobs=2)
    out = llm.generate(prompts[1], params)[0]
    for comp in out.outputs:
        assert [lp.token_id for lp in comp.logprobs] == comp.token_ids
        assert sum(lp.logprob for lp in comp.logprobs) == pytest.approx(comp.cumulative_logprob, abs=1e-4)
        assert all(len(lp.top) == 2 for lp in comp.logprobs) and comp.text
    engine = llm.engine
    engine.add_request("beams", prompts[0], params)
    for _ in range(4):
        engine.step()
    engine.abort("beams")
    done = engine.step()
    assert [o.finish_reason for o in done] == ["abort"]
    assert_blocks_released(llm)


def test_fork_shares_full_blocks_and_copies_the_partial_one():
    bm = BlockManager(num_blocks=8, block_size=4)
    params = SamplingParams(use_beam_search=True, best_of=2)
    parent = Sequence("r", list(range(10)), params, max_total_tokens=64)
    bm.allocate(parent, 10)
    parent.num_computed_tokens = 10
    child = parent.fork(index=1)
    copies = bm.fork(parent, child)
    assert child.block_table[:2] == parent.block_table[:2] and child.block_table[2] != parent.block_table[2]
    assert copies == [(parent.block_table[2], child.block_table[2])]
    assert [bm.blocks[b].ref_count for b in parent.block_table] == [2, 2, 1]
    assert child.num_computed_tokens == 10 and child.token_ids == parent.token_ids
    unshared = parent.fork(index=2)
    assert len(bm.fork(parent, unshared, share=False)) == 3
    for seq in (parent, child, unshared):
        bm.free(seq)
    assert bm.num_free_blocks == 8 and all(b.ref_count == 0 for b in bm.blocks)
    # no free block for the partial copy: the child recomputes from the last full block
    bm.allocate(parent, 10)
    parent.num_computed_tokens = 10
    hog = Sequence("h", list(range(20)), params, max_total_tokens=64)
    bm.allocate(hog, 20)
    late = parent.fork(index=3)
    assert bm.fork(parent, late) == [] and late.num_computed_tokens == 8


@pytest.mark.parametrize("fields, named", [
    (dict(temperature=0.7), "temperature"),
    (dict(top_p=0.9), "top_p"),
    (dict(repetition_penalty=1.2), "repetition_penalty"),
    (dict(stop=["."]), "stop"),
    (dict(n=3, best_of=2), "n"),
])
def test_incompatible_options_name_the_field(fields, named):
    with pytest.raises(ValidationError, match=named):
        SamplingParams(use_beam_search=True, **fields)


def test_beam_options_need_beam_search():
    for fields in (dict(best_of=2), dict(length_penalty=0.5), dict(early_stopping=True)):
        with pytest.raises(ValidationError, match=next(iter(fields))):
            SamplingParams(**fields)
    assert SamplingParams(use_beam_search=True, temperature=0.0).beam_width == 1
    assert SamplingParams(use_beam_search=True, n=3).beam_width == 3


def test_beam_search_too_big_for_the_engine_is_a_request_error(setup):
    model_dir, _, prompts, _, _ = setup
    llm = LLM(model=str(model_dir), dtype="float32", block_size=16, max_num_seqs=4,
              kv_cache_bytes=kv_bytes_for(model_dir, 16 * 8))
    wide, long = llm.generate([prompts[0]] * 2, [SamplingParams(use_beam_search=True, best_of=5),
                                                 SamplingParams(use_beam_search=True, best_of=4, max_tokens=100)])
    assert "max_num_seqs" in wide.error and "lower best_of or max_tokens" in long.error


def test_smollm2_beams_match_transformers(smollm2_dir):
    """The real model, a chat prompt, 4 beams, its own EOS."""
    llm = LLM(model=str(smollm2_dir), dtype="float32")
    hf = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    chats = [[{"role": "user", "content": "What is the capital of France?"}]]
    params = SamplingParams(use_beam_search=True, best_of=4, n=2, max_tokens=20)
    outputs = llm.generate(chats, params)
    assert llm.engine.eos_token_ids == {EOS}
    for out in outputs:
        ref, ref_scores = hf_beams(hf, out.prompt_token_ids, 4, 2, 1.0, False, 0, [EOS], max_new=20)
        assert [c.token_ids for c in out.outputs] == ref
        scores = [c.cumulative_logprob / len(c.token_ids) for c in out.outputs]
        assert scores == pytest.approx(ref_scores, abs=1e-3)
        assert all(c.text for c in out.outputs)
    assert_blocks_released(llm)
