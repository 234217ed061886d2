"""Greedy decoding with transformers, step by step, as the reference the engine must match."""
from __future__ import annotations

import torch


@torch.inference_mode()
def hf_greedy(model, prompt_ids: list[int], max_new: int, eos_ids: set[int] | None = None):
    """Return (tokens, per-step fp32 log-softmax rows) for greedy decoding of one prompt (batch of one, no padding)."""
    out = model(torch.tensor([prompt_ids]), use_cache=True)
    past, logprobs, tokens = out.past_key_values, [], []
    for _ in range(max_new):
        row = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        logprobs.append(row)
        token = int(row.argmax())
        tokens.append(token)
        if eos_ids and token in eos_ids:
            break
        out = model(torch.tensor([[token]]), past_key_values=past, use_cache=True)
        past = out.past_key_values
    return tokens, logprobs


def compare_greedy(ours, ref_tokens: list[int], ref_logprobs: list[torch.Tensor], atol: float = 1e-4) -> int:
    """Assert the engine's greedy output matches the reference; return 1 if a near-tie flip was tolerated, else 0.

    A divergence is tolerated only when each side's token is in the other's top-5 at that position (fp32 rounding
    from different batch shapes can flip a near-tie); comparison stops there, since the continuations differ.
    Before any divergence, the engine's logprob of every chosen token must match the reference within `atol`.
    """
    comp = ours.outputs[0]
    for i, ref_token in enumerate(ref_tokens):
        assert i < len(comp.token_ids), f"engine stopped early at {i}: {comp.token_ids} vs {ref_tokens}"
        token = comp.token_ids[i]
        ref_row = ref_logprobs[i]
        if token != ref_token:
            our_top = {t for t, _ in comp.logprobs[i].top}
            ref_top = set(torch.topk(ref_row, 5).indices.tolist())
            assert ref_token in our_top and token in ref_top, (
                f"divergence at step {i}: engine {token} vs HF {ref_token}, not a near-tie")
            return 1
        assert abs(comp.logprobs[i].logprob - float(ref_row[token])) < atol, (
            f"logprob mismatch at step {i}: {comp.logprobs[i].logprob} vs {float(ref_row[token])}")
        for alt, lp in comp.logprobs[i].top:
            assert abs(lp - float(ref_row[alt])) < atol
    assert len(comp.token_ids) == len(ref_tokens), f"engine ran past the reference: {comp.token_ids} vs {ref_tokens}"
    return 0
