"""Sampler behaviour on hand-made logits: no model involved."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from tide.engine.sampler import (
    Sampler,
    apply_penalties_,
    mask_stop_tokens_before_min_tokens_,
    min_p_mask,
    top_k_mask,
    top_p_mask,
)
from tide.engine.sampling_params import SamplingParams
from tide.kernels import native_ops, torch_ops

EOS = 0


@dataclass
class Row:
    params: SamplingParams
    prompt_token_ids: list[int] = field(default_factory=lambda: [5, 6])
    output_token_ids: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None


def seeded(params: SamplingParams) -> Row:
    return Row(params, generator=torch.Generator().manual_seed(params.seed))


def draw_many(logits: torch.Tensor, params: SamplingParams, n: int = 3000) -> torch.Tensor:
    """Sample `n` times from one row of logits, in one batch, with the default RNG seeded."""
    torch.manual_seed(1234)
    out = Sampler()(logits.expand(n, -1), [Row(params) for _ in range(n)], {EOS})
    return torch.tensor(out.token_ids)


# probabilities chosen away from every boundary the tests use
PROBS = torch.tensor([0.05, 0.35, 0.04, 0.25, 0.15, 0.10, 0.03, 0.02, 0.01])
LOGITS = PROBS.log().unsqueeze(0)


@pytest.mark.parametrize("argmax", [torch_ops.argmax, native_ops.argmax], ids=["twin", "native"])
def test_greedy_is_argmax_of_any_dtype(argmax):
    logits = torch.randn(8, 50, generator=torch.Generator().manual_seed(0))
    rows = [Row(SamplingParams(temperature=0.0)) for _ in range(8)]
    for dtype in (torch.float32, torch.bfloat16):
        out = Sampler(argmax)(logits.to(dtype), rows, {EOS})
        assert out.token_ids == logits.to(dtype).float().argmax(dim=-1).tolist()
        assert out.logprobs == [None] * 8


def test_sampler_leaves_the_callers_logits_unchanged():
    logits = torch.randn(2, 20, generator=torch.Generator().manual_seed(0))
    before = logits.clone()
    rows = [Row(SamplingParams(temperature=0.8, top_k=3, top_p=0.5, min_p=0.1, repetition_penalty=1.5),
                output_token_ids=[1, 2]),
            Row(SamplingParams(temperature=0.0, frequency_penalty=1.0, min_tokens=5), output_token_ids=[3])]
    Sampler()(logits, rows, {EOS})
    assert torch.equal(logits, before)


def run_steps(rows: list[Row], target: int, logits_per_step: list[torch.Tensor]) -> list[int]:
    """Sample len(logits_per_step) steps for `rows`; return the tokens of rows[target]."""
    sampler, tokens = Sampler(), []
    for step_logits in logits_per_step:
        out = sampler(step_logits[: len(rows)], rows, {EOS})
        tokens.append(out.token_ids[target])
    return tokens


def test_seeded_row_samples_the_same_whatever_the_batch():
    gen = torch.Generator().manual_seed(7)
    steps = [torch.randn(1, 300, generator=gen) for _ in range(15)]
    others = [torch.randn(4, 300, generator=gen) for _ in range(15)]
    params = SamplingParams(temperature=1.0, top_p=0.95, seed=42)

    alone = run_steps([seeded(params)], 0, steps)
    torch.manual_seed(0)  # the unseeded neighbours' draws must not matter
    batch_first = run_steps([seeded(params), Row(SamplingParams()), Row(SamplingParams(temperature=0.0)),
                             Row(SamplingParams(top_k=5, seed=None))], 0,
                            [torch.cat([s, o[:3]]) for s, o in zip(steps, others)])
    torch.manual_seed(99)
    batch_last = run_steps([Row(SamplingParams(temperature=1.5)), seeded(SamplingParams(seed=3)),
                            Row(SamplingParams(min_p=0.2)), seeded(params)], 3,
                           [torch.cat([o[:3], s]) for s, o in zip(steps, others)])
    other_seed = run_steps([seeded(SamplingParams(temperature=1.0, top_p=0.95, seed=43))], 0, steps)

    assert alone == batch_first == batch_last
    assert alone != other_seed  # would be equal if the seed were ignored


@pytest.mark.parametrize("params, support", [
    (SamplingParams(top_k=3), {1, 3, 4}),
    (SamplingParams(top_p=0.7), {1, 3, 4}),          # 0.35 + 0.25 < 0.7 <= 0.35 + 0.25 + 0.15
    (SamplingParams(top_p=0.3), {1}),                # the top token alone already reaches p
    (SamplingParams(min_p=0.3), {1, 3, 4}),          # keeps prob >= 0.105
    (SamplingParams(top_k=4, top_p=0.8), {1, 3, 4}),  # top-4 renormalised: 0.41, 0.29, 0.18 reach 0.8
    (SamplingParams(top_k=4, min_p=0.5), {1, 3}),
    (SamplingParams(top_k=100), set(range(9))),
])
def test_truncation_keeps_exactly_the_expected_support(params, support):
    assert set(draw_many(LOGITS, params).tolist()) == support


def test_top_k_mask_keeps_exactly_k_and_breaks_ties_by_token_id():
    logits = torch.tensor([[1.0, 3.0, 3.0, 3.0, 0.0, 3.0],
                           [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],
                           [2.0, 2.0, 2.0, 2.0, 2.0, 2.0]])
    dropped = top_k_mask(logits, torch.tensor([2, 3, 4]))
    assert (~dropped).nonzero().tolist() == [[0, 1], [0, 2], [1, 0], [1, 1], [1, 2],
                                             [2, 0], [2, 1], [2, 2], [2, 3]]


def test_top_p_mask_finds_the_smallest_nucleus_and_keeps_boundary_ties():
    probs = torch.tensor([[0.1, 0.6, 0.3, 0.0],
                          [0.4, 0.2, 0.2, 0.2],
                          [0.25, 0.25, 0.25, 0.25]])
    dropped = top_p_mask(probs, torch.tensor([0.65, 0.5, 0.01]))
    assert (~dropped).tolist() == [[False, True, True, False],
                                   [True, True, True, True],     # 0.4 + one 0.2 reaches 0.5; its ties stay
                                   [True, True, True, True]]


def test_top_p_mask_widens_its_candidates_for_a_flat_distribution():
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(3, 5000, generator=gen) * 0.1, dim=-1)  # nucleus of thousands of tokens
    p = torch.tensor([0.9, 0.3, 0.99])
    dropped = top_p_mask(probs, p)
    for row in range(3):
        ordered = probs[row].sort(descending=True).values
        size = int((ordered.cumsum(0) < p[row]).sum()) + 1
        assert size > 256
        assert int((~dropped[row]).sum()) == size


def test_min_p_mask_is_relative_to_the_most_probable_token():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.3, 0.3, 0.2, 0.2]])
    dropped = min_p_mask(probs, torch.tensor([0.5, 0.9]))
    assert (~dropped).tolist() == [[True, True, False, False], [True, True, False, False]]


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits():
    logits = torch.tensor([[2.0, -1.0, 3.0, -2.0, 4.0]])
    row = Row(SamplingParams(repetition_penalty=2.0), prompt_token_ids=[0, 1], output_token_ids=[1, 2])
    apply_penalties_(logits, [row])
    assert logits.tolist() == [[1.0, -2.0, 1.5, -2.0, 4.0]]


def test_presence_and_frequency_penalties_count_output_tokens_only():
    logits = torch.zeros(2, 5)
    rows = [Row(SamplingParams(presence_penalty=0.5, frequency_penalty=0.25), prompt_token_ids=[4],
                output_token_ids=[1, 1, 1, 2]),
            Row(SamplingParams(), output_token_ids=[1])]
    apply_penalties_(logits, rows)
    assert logits.tolist() == [[0.0, -1.25, -0.75, 0.0, 0.0], [0.0] * 5]


def test_repetition_penalty_changes_the_greedy_choice():
    logits = torch.tensor([[0.0, 3.0, 2.0]])
    plain = Row(SamplingParams(temperature=0.0), prompt_token_ids=[0], output_token_ids=[1])
    penalized = Row(SamplingParams(temperature=0.0, repetition_penalty=2.0), prompt_token_ids=[0], output_token_ids=[1])
    assert Sampler()(logits.expand(2, -1), [plain, penalized], {EOS}).token_ids == [1, 2]


def test_min_tokens_masks_eos_and_stop_token_ids_until_reached():
    logits = torch.tensor([[9.0, 1.0, 8.0, 7.0, 0.0]])
    params = SamplingParams(temperature=0.0, min_tokens=2, stop_token_ids=[2])
    early = Row(params, output_token_ids=[4])
    done = Row(params, output_token_ids=[4, 4])
    masked = logits.repeat(2, 1)
    mask_stop_tokens_before_min_tokens_(masked, [early, done], {EOS})
    assert masked[0].tolist() == [float("-inf"), 1.0, float("-inf"), 7.0, 0.0]
    assert masked[1].tolist() == logits[0].tolist()
    assert Sampler()(logits.expand(2, -1), [early, done], {EOS}).token_ids == [3, 0]


def test_logprobs_come_from_the_raw_logits_with_top_alternatives():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 40, generator=gen)
    rows = [Row(SamplingParams(temperature=0.0, logprobs=3, repetition_penalty=3.0), output_token_ids=[7]),
            Row(SamplingParams(temperature=0.5, logprobs=0, seed=1), generator=torch.Generator().manual_seed(1)),
            Row(SamplingParams(temperature=0.0)),
            Row(SamplingParams(top_k=5, logprobs=5, presence_penalty=2.0), output_token_ids=[1, 2])]
    out = Sampler()(logits, rows, {EOS})
    expected = torch.log_softmax(logits, dim=-1)
    assert out.logprobs[2] is None
    for i, k in ((0, 3), (1, 0), (3, 5)):
        lp = out.logprobs[i]
        assert lp.token_id == out.token_ids[i]
        assert lp.logprob == pytest.approx(expected[i, lp.token_id].item(), abs=1e-6)
        top_values, top_ids = expected[i].topk(k)
        assert [t for t, _ in lp.top] == top_ids.tolist()
        assert [v for _, v in lp.top] == pytest.approx(top_values.tolist(), abs=1e-6)


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def test_temperature_sampling_matches_the_tempered_softmax():
    logits = torch.tensor([[1.0, 0.5, 0.0, -0.5, 2.0, -1.0]])
    n = 20000
    counts = torch.bincount(draw_many(logits, SamplingParams(temperature=0.7), n), minlength=6).float()
    tempered = torch.softmax(logits[0] / 0.7, dim=-1)
    untempered = torch.softmax(logits[0], dim=-1)
    # 5 degrees of freedom: the 99.9% quantile is 20.5; the wrong temperature lands far beyond it
    assert chi_square(counts, tempered) < 20.5
    assert chi_square(counts, untempered) > 200
