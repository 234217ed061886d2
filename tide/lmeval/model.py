"""`TideLM`: lm-evaluation-harness's `tide` model. Each call of lm-eval's (all of a request type's requests at once)
becomes one Tide job; tokenization and truncation follow lm-eval's Hugging Face backend (tide/lmeval/requests.py)."""
from __future__ import annotations

import logging
import weakref
from importlib import metadata
from typing import Any

from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import _add_special_kwargs, has_bos_prefix
from tqdm import tqdm

from tide.lmeval import connect
from tide.lmeval.requests import generation, rolling_windows, score_answer, score_row
from tide.lmeval.transport import JobRunner
from tide.settings import get_settings

logger = logging.getLogger("tide.lmeval")

# Token pair of a loglikelihood request: (context ids, continuation ids).
Pair = tuple[list[int], list[int]]


class TideLM(TemplateLM):
    """lm-eval's `tide` model: `--model tide --model_args model=smollm2-135m,dtype=float32`.

    model_args: `model` (alias, HF directory or GGUF file; on workers, the served name), `dtype` and any
    `EngineConfig` field (engine in this process), `tokenizer` (where the tokenizer is, when only the workers know
    `model`), `max_length`, `max_gen_toks`, `add_bos_token`, `prefix_token_id` (as lm-eval's HF backend), and
    `redis_url` or `api_url` + `api_key` to send the jobs elsewhere (default: TIDE_REDIS_URL, TIDE_API_URL,
    TIDE_API_KEY when set, else this process), `local=True` to run here all the same. `batch_size` is accepted and
    unused: the engine batches by itself.
    """

    def __init__(self, model: str = "smollm2-135m", dtype: str = "auto", tokenizer: str | None = None,
                 max_length: int | None = None, max_gen_toks: int = 256, add_bos_token: bool | None = None,
                 prefix_token_id: int | None = None, redis_url: str | None = None, api_url: str | None = None,
                 api_key: str | None = None, local: bool = False, shard_rows: int = 256,
                 timeout: float | None = None, runner: JobRunner | None = None, batch_size: Any = None,
                 max_batch_size: Any = None, device: str | None = None, **engine_options: Any) -> None:
        super().__init__()
        self.model_name, self.dtype, self._max_gen_toks = model, dtype, int(max_gen_toks)
        self.add_bos_token, self.custom_prefix_token_id = add_bos_token, prefix_token_id
        if _engine_device(device) is not None:
            engine_options.setdefault("device", _engine_device(device))
        if runner is not None:
            self.backend_info = connect.Backend(runner, connect.local_tokenizer(tokenizer or model),
                                                description="the runner given")
        else:
            settings = get_settings()
            target = None if local else connect.remote_target(settings, redis_url, api_url, api_key)
            self.backend_info = connect.open_backend(target, model, dtype, tokenizer, api_key or settings.api_key,
                                                     settings, int(shard_rows), timeout, engine_options)
        weakref.finalize(self, self.backend_info.close)
        self.runner, self.tokenizer = self.backend_info.runner, self.backend_info.tokenizer
        self._max_length = int(max_length) if max_length is not None else self._default_max_length()
        logger.info("tide lm-eval backend: %s, max_length %d", self.backend_info.description, self._max_length)

    def close(self) -> None:
        """Stop the engine (and remove the job files) this backend started, if any."""
        self.backend_info.close()

    # ---- what lm-eval reads -----------------------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        if self.custom_prefix_token_id is not None:
            return int(self.custom_prefix_token_id)
        if self.tokenizer.bos_token_id is not None:
            return self.tokenizer.bos_token_id
        return self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def get_model_info(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "engine": f"tide {_version()}", "dtype": self.dtype,
                "backend": self.backend_info.description}

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs: Any) -> list[int]:
        special = _add_special_kwargs(add_special_tokens, self.add_bos_token)
        if add_special_tokens is None and has_bos_prefix(string, self.tokenizer.decode(self.prefix_token_id)):
            special["add_special_tokens"] = False  # the text already starts with the BOS token
        ids = self.tokenizer.encode(string, **special)
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt,
                                                  continue_final_message=not add_generation_prompt)

    # ---- the three request types --------------------------------------------------------------------------------

    def _loglikelihood_tokens(self, requests: list[tuple[tuple[str, str] | None, list[int], list[int]]],
                              disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        answers = self._score([(context, continuation) for _, context, continuation in requests], "loglikelihood")
        for (request, _, _), answer in zip(requests, answers):
            if request is not None:
                self.cache_hook.add_partial("loglikelihood", request, answer)
        return answers

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows = [rolling_windows(self.tok_encode(string), self.prefix_token_id, self.max_length)
                   for (string,) in (req.args for req in tqdm(requests, disable=disable_tqdm, desc="Windowing"))]
        answers = iter(self._score([pair for text in windows for pair in text], "loglikelihood_rolling"))
        totals = []
        for req, text in zip(requests, windows):
            totals.append(sum(next(answers)[0] for _ in text))
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, totals[-1])
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        eos = self.tokenizer.decode(self.eot_token_id, skip_special_tokens=False)
        asked = [generation(f"gen-{i}", self._generation_context(req.args[0]), req.args[1], self.max_length,
                            self.max_gen_toks, eos) for i, req in enumerate(requests)]
        results = self.runner.run([g.row for g in asked], "generate_until")
        texts = []
        for req, asked_one in zip(requests, asked):
            texts.append(asked_one.answer(results[asked_one.row["id"]]))
            self.cache_hook.add_partial("generate_until", req.args[:2], texts[-1])
        return texts

    # ---- helpers --------------------------------------------------------------------------------------------

    def _score(self, pairs: list[Pair], label: str) -> list[tuple[float, bool]]:
        """One job scoring every distinct pair (repeated ones are scored once)."""
        rows: dict[tuple[tuple[int, ...], tuple[int, ...]], dict[str, Any]] = {}
        for context, continuation in pairs:
            key = (tuple(context), tuple(continuation))
            if key not in rows:
                rows[key] = score_row(f"s-{len(rows)}", context, continuation, self.max_length)
        results = self.runner.run(list(rows.values()), label) if rows else {}
        return [score_answer(results[rows[(tuple(c), tuple(k))]["id"]]) for c, k in pairs]

    def _generation_context(self, context: str) -> list[int]:
        """As lm-eval's HF backend encodes generation contexts (tok_batch_encode)."""
        bos = getattr(self.tokenizer, "bos_token", None)
        special = {"add_special_tokens": False} if has_bos_prefix(context, bos) else _add_special_kwargs(
            None, self.add_bos_token)
        return self.tokenizer(context, **special).input_ids

    def _default_max_length(self) -> int:
        """lm-eval's HF default (the model's positions), less two: the engine holds a prompt of at most
        `max_seq_tokens - 1` tokens, and a scored prompt carries its last token too (lm-eval's HF drops it)."""
        limit = self.backend_info.max_seq_tokens or _model_positions(self.tokenizer)
        return limit - 2


def _engine_device(device: str | None) -> str | None:
    """lm-eval's --device (its default is cuda:0) as the engine's: None (auto: CUDA where torch sees one, else the
    CPU) for cuda, cpu as asked."""
    if device is None or device.startswith("cuda"):
        return None
    if device == "cpu":
        return "cpu"
    raise ValueError(f"device {device!r}: the tide backend runs on cpu or cuda")


def _model_positions(tokenizer) -> int:
    """The model's context length as lm-eval's HF backend resolves it: its config beside the tokenizer, else the
    tokenizer's own limit, else 2048."""
    from lm_eval.models.utils import resolve_max_length
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(tokenizer.name_or_path)
    except (OSError, ValueError):
        config = None
    return resolve_max_length(config, tokenizer, default=2048)


def _version() -> str:
    try:
        return metadata.version("tide")
    except metadata.PackageNotFoundError:
        return "(not installed)"
