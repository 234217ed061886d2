"""Speculative decoding: greedy outputs equal plain decoding whatever the proposals, and rollback leaks nothing."""
import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.helpers.models import TINY_CONFIGS, kv_bytes_for
from tide.engine import LLM, EngineConfig, SamplingParams
from tide.engine.block_manager import BlockManager
from tide.engine.decoding.ngram_proposer import ngram_proposal
from tide.engine.loader import load_tokenizer
from tide.engine.sequence import Sequence

MAX_NEW = 16
# Tiny random models copy nothing from their prompt; over a 96-token vocabulary their output still repeats tokens of
# the prompt and of itself, so prompt lookup has something to propose.
VOCAB = 96


@pytest.fixture(scope="session")
def small_vocab_dir(smollm2_dir, tmp_path_factory):
    """Factory: small_vocab_dir(kind) -> a tiny random model (TINY_CONFIGS[kind]) with a 96-token vocabulary,
    saved with SmolLM2's tokenizer (token ids below 96 are valid in both)."""
    tokenizer = load_tokenizer(smollm2_dir)
    built = {}

    def build(kind: str):
        if kind not in built:
            config = TINY_CONFIGS[kind]()
            config.vocab_size, config.eos_token_id = VOCAB, tokenizer.eos_token_id
            torch.manual_seed(1)
            path = tmp_path_factory.mktemp(f"small-vocab-{kind}")
            AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(path)
            tokenizer.save_pretrained(path)
            built[kind] = path
        return built[kind]

    return build


def make_prompts(seed: int = 0) -> list[list[int]]:
    """Random prompts, two of them repeating a phrase."""
    rng = random.Random(seed)
    phrase = [rng.randrange(3, VOCAB) for _ in range(6)]
    prompts = [[rng.randrange(3, VOCAB) for _ in range(n)] for n in (3, 12, 30)]
    prompts += [phrase + [rng.randrange(3, VOCAB) for _ in range(k)] + phrase for k in (2, 9)]
    return prompts


def generate(model_dir, prompts, params, **config):
    """Outputs of an engine that speculates at any batch size, unless `config` says otherwise."""
    llm = LLM(model=str(model_dir), dtype="float32", num_threads=1, **{"spec_max_running": 64, **config})
    return llm, llm.generate(prompts, params)


@pytest.fixture(scope="module")
def baseline(small_vocab_dir):
    model_dir = small_vocab_dir("llama")
    prompts = make_prompts()
    _, outputs = generate(model_dir, prompts, SamplingParams(temperature=0.0, max_tokens=MAX_NEW, logprobs=2))
    return model_dir, prompts, outputs


# ---- prompt lookup ----------------------------------------------------------------------------------------------

def test_ngram_proposal_takes_the_latest_longest_match():
    assert ngram_proposal([1, 2, 3, 4, 5, 1, 2], 3, 1, 3) == [3, 4, 5]
    assert ngram_proposal([1, 2, 3, 1, 2, 9, 1, 2], 2, 1, 3) == [9, 1]  # latest of two matches
    assert ngram_proposal([7, 1, 2, 8, 2], 2, 1, 2) == [8, 2]  # falls back to n=1 when no 2-gram matches
    assert ngram_proposal([7, 1, 2, 8, 2], 2, 2, 2) == []
    assert ngram_proposal([5, 6, 7], 2, 1, 3) == []


def test_ngram_proposal_matches_whole_tokens_only():
    # 256 and 1 share bytes (00 01 00 00 | 01 00 00 00): a byte-level hit across them must not count
    assert ngram_proposal([256, 0, 0, 7, 1, 0], 2, 2, 2) == []
    assert ngram_proposal([1, 0, 9, 256, 1, 0], 2, 2, 2) == [9, 256]


# ---- greedy identity ----------------------------------------------------------------------------------------------

SCHEDULES = {
    "default": dict(),
    "chunked": dict(max_num_batched_tokens=7),  # the budget cuts drafts off
    "preempt": dict(kv_cache_bytes="tiny"),  # sequences carrying drafts get preempted
}


@pytest.mark.parametrize("proposer, schedule", [("ngram", "default"), ("ngram", "chunked"), ("ngram", "preempt"),
                                                ("draft_other", "default"), ("draft_other", "chunked"),
                                                ("draft_self", "preempt")])
def test_greedy_output_is_unchanged(baseline, small_vocab_dir, proposer, schedule):
    model_dir, prompts, expected = baseline
    config = dict(SCHEDULES[schedule])
    if config.get("kv_cache_bytes") == "tiny":
        config.update(kv_cache_bytes=kv_bytes_for(model_dir, 4 * 20), block_size=4, enable_prefix_caching=False)
    if proposer == "ngram":
        config.update(speculative="ngram", spec_ngram_min=1)
    else:
        draft = model_dir if proposer == "draft_self" else small_vocab_dir("qwen2")
        config.update(speculative="draft", draft_model=str(draft))
    llm = LLM(model=str(model_dir), dtype="float32", num_threads=1, num_speculative_tokens=3, spec_max_running=64,
              **config)
    # draft even when blocks are scarce, so that sequences carrying drafts get preempted and cut by the budget
    llm.engine.speculator.reserve_blocks = -llm.engine.block_manager.num_blocks
    outputs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=MAX_NEW, logprobs=2))
    for ours, ref in zip(outputs, expected):
        assert ours.token_ids == ref.token_ids
        assert [lp.logprob for lp in ours.outputs[0].logprobs] == pytest.approx(
            [lp.logprob for lp in ref.outputs[0].logprobs], abs=1e-4)
    stats = llm.engine.stats
    assert stats.spec_proposed_tokens > 0
    assert stats.generation_tokens == sum(len(o.token_ids) for o in outputs)
    if proposer == "draft_self":  # the target drafting for itself agrees with itself
        assert stats.spec_acceptance_rate > 0.9
    if schedule == "preempt":
        assert stats.preemptions > 0
    assert llm.engine.block_manager.num_free_blocks == llm.engine.block_manager.num_blocks


def test_acceptance_is_counted_per_request_and_in_total(baseline):
    model_dir, prompts, _ = baseline
    llm, outputs = generate(model_dir, prompts, SamplingParams(temperature=0.0, max_tokens=MAX_NEW),
                            speculative="draft", draft_model=str(model_dir), num_speculative_tokens=4)
    stats = llm.engine.stats
    assert sum(o.metrics.spec_proposed_tokens for o in outputs) == stats.spec_proposed_tokens > 0
    assert sum(o.metrics.spec_accepted_tokens for o in outputs) == stats.spec_accepted_tokens > 0
    assert stats.spec_acceptance_rate == stats.spec_accepted_tokens / stats.spec_proposed_tokens
    # with every draft accepted, a step yields up to 5 tokens: far fewer steps than tokens
    assert stats.num_steps < stats.generation_tokens / 2


def test_penalties_min_tokens_and_n_are_verified_as_without_speculation(small_vocab_dir):
    model_dir = small_vocab_dir("qwen3")
    prompts = make_prompts(seed=1)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW, repetition_penalty=1.3, frequency_penalty=0.5,
                            min_tokens=6, n=2, logprobs=1)
    _, expected = generate(model_dir, prompts, params)
    llm, outputs = generate(model_dir, prompts, params, speculative="draft", draft_model=str(model_dir))
    assert [[s.token_ids for s in o.outputs] for o in outputs] == [[s.token_ids for s in o.outputs] for o in expected]
    assert llm.engine.stats.spec_accepted_tokens > 0


# ---- stops inside an accepted run ---------------------------------------------------------------------------------

def test_stops_inside_accepted_drafts_end_the_output_exactly_there(baseline):
    """max_tokens, a stop token, a stop string and EOS, each reached inside a run of accepted drafts."""
    model_dir, prompts, expected = baseline
    tokens, text = expected[1].token_ids, expected[1].text
    stop_at = next(i for i in range(3, len(tokens)) if tokens[i] not in tokens[:i])
    stop_string = text[len(text) // 2:len(text) // 2 + 3].strip() or text[-2:]
    cases = [SamplingParams(temperature=0.0, max_tokens=7, ignore_eos=True),
             SamplingParams(temperature=0.0, max_tokens=MAX_NEW, stop_token_ids=[tokens[stop_at]], ignore_eos=True),
             SamplingParams(temperature=0.0, max_tokens=MAX_NEW, stop=[stop_string], ignore_eos=True),
             SamplingParams(temperature=0.0, max_tokens=MAX_NEW)]
    outputs = {}
    for mode, extra in (("off", {}), ("on", dict(speculative="draft", draft_model=str(model_dir),
                                                 num_speculative_tokens=6))):
        llm = LLM(model=str(model_dir), dtype="float32", num_threads=1, spec_max_running=64, **extra)
        llm.engine.eos_token_ids = {tokens[stop_at]}  # EOS for this test: a token in the middle of the output
        outputs[mode] = llm.generate([prompts[1]] * len(cases), cases)
    for ours, ref in zip(outputs["on"], outputs["off"]):
        out, want = ours.outputs[0], ref.outputs[0]
        assert (out.token_ids, out.text, out.finish_reason, out.stop_reason) == \
               (want.token_ids, want.text, want.finish_reason, want.stop_reason)
        assert ours.metrics.spec_accepted_tokens > 0
    for stopped in outputs["off"][1:4:2]:  # the stop token and EOS ended these early
        assert stopped.token_ids == tokens[:stop_at + 1]
    assert len(outputs["off"][0].token_ids) == 7


# ---- what is not speculated ---------------------------------------------------------------------------------------

def test_sampled_rows_and_opted_out_requests_are_not_speculated(baseline):
    model_dir, prompts, _ = baseline
    params = [SamplingParams(temperature=0.8, seed=3, max_tokens=MAX_NEW),
              SamplingParams(temperature=0.0, max_tokens=MAX_NEW, speculate=False)]
    _, plain = generate(model_dir, prompts[:2], params)
    llm, spec = generate(model_dir, prompts[:2], params, speculative="draft", draft_model=str(model_dir))
    assert [o.token_ids for o in spec] == [o.token_ids for o in plain]
    assert llm.engine.stats.spec_proposed_tokens == 0


class RecordingProposer:
    """Passes proposals through, noting how many sequences ran each time some were proposed for."""

    def __init__(self, inner, scheduler) -> None:
        self.inner, self.scheduler, self.running_counts = inner, scheduler, []

    def propose(self, seqs, limits):
        if seqs:
            self.running_counts.append(len(self.scheduler.running))
        return self.inner.propose(seqs, limits)


def test_speculation_is_off_above_the_running_threshold(baseline):
    model_dir, prompts, expected = baseline
    params = [SamplingParams(temperature=0.0, max_tokens=n) for n in (4, 6, 8, 12, MAX_NEW)]
    llm = LLM(model=str(model_dir), dtype="float32", num_threads=1, speculative="draft",
              draft_model=str(model_dir), spec_max_running=2)
    recording = RecordingProposer(llm.engine.speculator.proposer, llm.engine.scheduler)
    llm.engine.speculator.proposer = recording
    outputs = llm.generate(prompts, params)
    assert recording.running_counts and max(recording.running_counts) <= 2
    assert [o.token_ids for o in outputs] == [r.token_ids[:p.max_tokens] for r, p in zip(expected, params)]


# ---- rollback -----------------------------------------------------------------------------------------------------

class WrongProposer:
    """Proposes tokens the target surely rejects: one off the token it will choose."""

    def __init__(self, expected: dict[tuple[int, ...], list[int]], k: int) -> None:
        self.expected, self.k = expected, k

    def propose(self, seqs, limits):
        proposals = []
        for seq, limit in zip(seqs, limits):
            done = len(seq.output_token_ids)
            upcoming = self.expected[tuple(seq.prompt_token_ids)][done:done + min(self.k, limit)]
            proposals.append([(t + 1) % VOCAB for t in upcoming])
        return proposals


def test_rejected_drafts_give_back_their_blocks_and_are_never_cached(baseline):
    model_dir, prompts, expected = baseline
    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW, ignore_eos=True)
    config = dict(model=str(model_dir), dtype="float32", num_threads=1, block_size=4, spec_max_running=64)
    free_counts = {}
    for mode in ("off", "ngram"):
        llm = LLM(**config, speculative=mode)
        engine, bm = llm.engine, llm.engine.block_manager
        if mode == "ngram":
            wanted = {tuple(p): o.token_ids for p, o in zip(prompts, expected)}
            engine.speculator.proposer = WrongProposer(wanted, k=6)
        for i, prompt in enumerate(prompts):
            engine.add_request(str(i), prompt, params)
        counts = []
        while engine.has_unfinished():
            engine.step()
            counts.append(bm.num_free_blocks)
            for seq in engine.scheduler.running:
                real = seq.token_ids[:seq.num_tokens - seq.num_draft_tokens]
                for i, block_id in enumerate(seq.block_table):
                    block = bm.blocks[block_id]
                    if block.token_ids:  # registered in the prefix cache: real tokens only
                        assert list(block.token_ids) == real[i * 4:(i + 1) * 4]
        free_counts[mode] = counts
        assert bm.num_free_blocks == bm.num_blocks
    assert engine.stats.spec_proposed_tokens > 0 and engine.stats.spec_accepted_tokens == 0
    # every draft rejected: each step ends holding exactly the blocks plain decoding holds
    assert free_counts["ngram"] == free_counts["off"]


def test_roll_back_frees_the_blocks_past_the_kept_tokens():
    bm = BlockManager(num_blocks=8, block_size=4)
    seq = Sequence("r", list(range(6)), SamplingParams(), max_total_tokens=64)
    seq.token_ids += [100, 101, 102, 103, 104]  # 5 drafts: 11 tokens in 3 blocks
    bm.allocate(seq, seq.num_tokens)
    seq.num_computed_tokens = seq.num_tokens
    bm.block_hashes(seq)
    assert bm.num_free_blocks == 5 and len(seq.block_hashes) == 2
    del seq.token_ids[6:]
    bm.roll_back(seq, 7)  # one draft accepted: its KV stays
    assert (len(seq.block_table), bm.num_free_blocks, seq.num_computed_tokens) == (2, 6, 7)
    assert len(seq.block_hashes) == 1  # the second block's hash covered draft tokens


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="speculative must be"):
        EngineConfig(speculative="medusa")
    with pytest.raises(ValueError, match="draft_model"):
        EngineConfig(speculative="draft")
    with pytest.raises(ValueError, match="spec_ngram_min"):
        EngineConfig(speculative="ngram", spec_ngram_min=3, spec_ngram_max=2)
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        EngineConfig(speculative="draft", draft_model="x", tensor_parallel_size=2)


# ---- SmolLM2 ------------------------------------------------------------------------------------------------------

def test_smollm2_chats_are_unchanged_by_prompt_lookup_and_by_a_tiny_draft(smollm2_dir, tiny_model_dir):
    from tests.helpers.prompts import CHATS
    from tide.benchmarks.speculative import grounded_prompts

    def run(**config):
        llm = LLM(model=str(smollm2_dir), dtype="float32", num_threads=1, spec_max_running=64, **config)
        prompts = [[{"role": "user", "content": c}] for c in CHATS[:5]] + grounded_prompts(llm.tokenizer, 2, seed=0)
        return llm, llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=40))

    _, plain = run()
    ngram, by_lookup = run(speculative="ngram")
    draft, by_draft = run(speculative="draft", draft_model=str(tiny_model_dir("llama")))
    assert [o.token_ids for o in by_lookup] == [o.token_ids for o in plain]
    assert [o.token_ids for o in by_draft] == [o.token_ids for o in plain]
    assert sum(o.finish_reason == "stop" for o in plain) >= 2  # EOS is reached, some of it inside accepted drafts
    # the notes-grounded prompts are where lookup pays: most of their drafts are right
    grounded = by_lookup[-2:]
    assert sum(o.metrics.spec_accepted_tokens for o in grounded) > 0.5 * sum(
        o.metrics.spec_proposed_tokens for o in grounded) > 0
    assert draft.engine.stats.spec_proposed_tokens > 0
