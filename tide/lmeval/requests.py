"""lm-eval's requests as Tide job rows, and the job's result rows back as the answers lm-eval expects.

Token for token what lm-eval's Hugging Face backend (its reference) computes:
- loglikelihood: the last `max_length + 1` tokens of context + continuation, scored from the continuation's first
  token (`max_tokens: 0`, `prompt_logprobs: 1`, `prompt_logprobs_start`); the answer is the continuation's summed
  logprobs and whether each of its tokens is the model's top choice. The context before the start may come from the
  prefix cache, so the choices of one question compute their shared context once.
- loglikelihood_rolling: lm-eval's own rolling windows over the text, each scored as above, summed per text.
- generate_until: the context's last `max_length - max_gen_toks` tokens, greedy unless `do_sample`, stopped at the
  `until` strings (and EOS), the text cut at the first stop string as lm-eval cuts it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

# Generation options lm-eval tasks use that SamplingParams takes under the same name.
_SAMPLING_KWARGS = ("top_p", "top_k", "min_p", "repetition_penalty", "seed")


class RequestError(ValueError):
    """An lm-eval request Tide cannot run as asked; the message names the option or request."""


def score_row(row_id: str, context: list[int], continuation: list[int], max_length: int) -> dict[str, Any]:
    """A score-only row for one (context, continuation) token pair, left-truncated as lm-eval's HF backend does."""
    if not context or not continuation:
        raise RequestError(f"request {row_id}: context and continuation must both have tokens")
    if len(continuation) > max_length:
        raise RequestError(f"request {row_id}: its continuation has {len(continuation)} tokens, more than "
                           f"max_length ({max_length})")
    whole = (context + continuation)[-(max_length + 1):]
    return {"id": row_id, "prompt": whole, "max_tokens": 0, "prompt_logprobs": 1,
            "prompt_logprobs_start": len(whole) - len(continuation)}


def score_answer(result: dict[str, Any]) -> tuple[float, bool]:
    """(summed logprob of the scored tokens, whether each was the model's most likely token) from a result row."""
    scored = [entry for entry in result["prompt_logprobs"] if entry is not None]
    total = sum(entry["logprob"] for entry in scored)
    greedy = all(entry["token_id"] == entry["top"][0]["token_id"] or entry["logprob"] >= entry["top"][0]["logprob"]
                 for entry in scored)
    return total, greedy


def rolling_windows(tokens: list[int], prefix_token: int, max_length: int) -> list[tuple[list[int], list[int]]]:
    """lm-eval's disjoint rolling windows over a text's tokens: (context, continuation) pairs scoring each token
    once, the first conditioned on `prefix_token`."""
    windows = get_rolling_token_windows(token_list=tokens, prefix_token=prefix_token, max_seq_len=max_length,
                                        context_len=1)
    return [make_disjoint_window(window) for window in windows]


@dataclass(frozen=True)
class Generation:
    """One generate_until request as a row, with the stop strings its text is cut at afterwards."""

    row: dict[str, Any]
    until: list[str]

    def answer(self, result: dict[str, Any]) -> str:
        return postprocess_generated_text(result["text"], self.until, think_end_token=None)


def generation(row_id: str, context: list[int], gen_kwargs: dict[str, Any], max_length: int,
               default_max_gen_toks: int, eos_text: str | None) -> Generation:
    """A generation row for one request; options SamplingParams has no counterpart for are refused by name."""
    if not isinstance(gen_kwargs, dict):
        raise RequestError(f"request {row_id}: generation kwargs must be a dict, got {type(gen_kwargs).__name__}")
    kwargs = dict(normalize_gen_kwargs(gen_kwargs, default_max_gen_toks))
    until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
    max_gen_toks = kwargs.pop("max_gen_toks")
    do_sample = kwargs.pop("do_sample", False)
    temperature = float(kwargs.pop("temperature", 0.0))
    temperature = temperature if do_sample else 0.0
    extra = {name: kwargs.pop(name) for name in _SAMPLING_KWARGS if name in kwargs}
    if kwargs:
        raise RequestError(f"request {row_id}: generation option(s) {', '.join(sorted(kwargs))} are not supported "
                           f"by the tide backend (supported: until, max_gen_toks, do_sample, temperature, "
                           f"{', '.join(_SAMPLING_KWARGS)})")
    if max_gen_toks >= max_length:
        raise RequestError(f"request {row_id}: max_gen_toks ({max_gen_toks}) must be less than max_length "
                           f"({max_length})")
    prompt = context[-(max_length - max_gen_toks):]
    if not prompt:
        raise RequestError(f"request {row_id}: the context has no tokens")
    row = {"id": row_id, "prompt": prompt, "max_tokens": max_gen_toks, "temperature": temperature,
           "stop": [s for s in until if s], **extra}
    return Generation(row, until)
