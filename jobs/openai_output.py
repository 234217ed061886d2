"""A batch's results in OpenAI's batch output shape: one JSON line per request, made from the Parquet parts.

Output lines carry the body the endpoint would have answered: a `chat.completion`, a `text_completion` (all samples
of a request as its choices) or a `response`, with OpenAI's logprobs and usage shapes, the `system_fingerprint` of the
engine that ran it and `created` the time it finished; or an embeddings `list` (jobs/embedding_output.py). Error lines carry the reason. Parquet stays the native format:
these files are written beside the parts when a batch finishes, and can be made at any time from the parts committed.
"""
from __future__ import annotations

import codecs
import hashlib
import json
import tempfile
from collections.abc import Iterable, Iterator
from itertools import groupby
from pathlib import Path

from tide.jobs.embedding_output import embedding_bodies
from tide.jobs.endpoints import CHAT_URL, COMPLETIONS_URL, EMBEDDINGS_URL
from tide.jobs.results import iter_output_rows
from tide.jobs.storage import Location

OUTPUT_NAME = "output.jsonl"
ERRORS_NAME = "errors.jsonl"
# Row errors that the request itself caused answer 400, as OpenAI's endpoint would; the rest (expiry, cancel,
# exhausted attempts, a crashed worker) carry no response.
_CLIENT_ERRORS = {"invalid_field", "missing_prompt", "missing_input", "unknown_field", "invalid_request", "context_length_exceeded",
                  "invalid_guided"}
_COMPLETION_DETAILS = {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0,
                       "rejected_prediction_tokens": 0}


def system_fingerprint(model: str, dtype: str, quantization: str, version: str) -> str:
    """A stable name for the configuration that produced an output (OpenAI's `system_fingerprint`)."""
    digest = hashlib.sha256(json.dumps([model, dtype, quantization, version]).encode()).hexdigest()
    return f"fp_{digest[:12]}"


def _request_id(job_id: str, custom_id: str) -> str:
    return hashlib.sha256(f"{job_id}/{custom_id}".encode()).hexdigest()[:24]


def output_lines(rows: Iterable[dict], job_id: str, endpoint: str, model: str) -> Iterator[dict]:
    """Result rows (in row, sample order) -> one OpenAI output line per request."""
    shape = _chat if endpoint == CHAT_URL else _completion if endpoint == COMPLETIONS_URL else _response
    for _, group in groupby(rows, key=lambda r: r["row_index"]):
        samples = list(group)
        custom_id = samples[0]["custom_id"]
        yield _answered(job_id, custom_id, shape(samples, _request_id(job_id, custom_id), model))


def _answered(job_id: str, custom_id: str, body: dict) -> dict:
    """The output line of a request answered with `body`."""
    request_id = _request_id(job_id, custom_id)
    return {"id": f"batch_req_{request_id}", "custom_id": custom_id,
            "response": {"status_code": 200, "request_id": request_id, "body": body}, "error": None}


def _finished(samples: list[dict]) -> int:
    return int(max((s.get("finished_at") or 0) for s in samples))


def _usage(samples: list[dict]) -> dict:
    first = samples[0]
    completion = sum(s["completion_tokens"] for s in samples)
    return {"prompt_tokens": first["prompt_tokens"], "completion_tokens": completion,
            "total_tokens": first["prompt_tokens"] + completion,
            "prompt_tokens_details": {"cached_tokens": first["cached_prompt_tokens"] or 0, "audio_tokens": 0},
            "completion_tokens_details": dict(_COMPLETION_DETAILS)}


def _chat(samples: list[dict], request_id: str, model: str) -> dict:
    choices = [{"index": s["sample_index"], "finish_reason": s["finish_reason"],
                "message": {"role": "assistant", "content": s["text"], "refusal": None, "annotations": []},
                "logprobs": None if s.get("logprobs") is None else {"content": [_chat_token(t) for t in s["logprobs"]],
                                                                    "refusal": None}}
               for s in samples]
    return {"id": f"chatcmpl-{request_id}", "object": "chat.completion", "created": _finished(samples),
            "model": model, "choices": choices, "usage": _usage(samples),
            "system_fingerprint": samples[0].get("system_fingerprint")}


def _token(entry: dict) -> dict:
    return {"token": entry["token"], "logprob": entry["logprob"], "bytes": entry["bytes"]}


def _chat_token(entry: dict) -> dict:
    return {**_token(entry), "top_logprobs": [_token(top) for top in entry["top"]]}


def _completion(samples: list[dict], request_id: str, model: str) -> dict:
    choices = [{"index": s["sample_index"], "finish_reason": s["finish_reason"], "text": s["text"],
                "logprobs": None if s.get("logprobs") is None else _completion_logprobs(s["logprobs"])}
               for s in samples]
    return {"id": f"cmpl-{request_id}", "object": "text_completion", "created": _finished(samples), "model": model,
            "choices": choices, "usage": _usage(samples), "system_fingerprint": samples[0].get("system_fingerprint")}


def _completion_logprobs(entries: list[dict]) -> dict:
    """The legacy shape: parallel lists, a {token: logprob} dict per position, and each token's character offset
    in the completion's text (a token that ends inside a character starts where that character does)."""
    decoder, offsets, text_length = codecs.getincrementaldecoder("utf-8")(errors="replace"), [], 0
    for entry in entries:
        offsets.append(text_length)
        text_length += len(decoder.decode(bytes(entry["bytes"])))
    return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{top["token"]: top["logprob"] for top in e["top"]} for e in entries],
            "text_offset": offsets}


def _response(samples: list[dict], request_id: str, model: str) -> dict:
    """A Response object (one output message); request fields it echoes come from the line as stored."""
    sample, usage = samples[0], _usage(samples)
    echo = json.loads(sample.get("echo") or "{}")
    complete = sample["finish_reason"] != "length"
    content = {"type": "output_text", "text": sample["text"], "annotations": [], "logprobs": []}
    return {
        "id": f"resp_{request_id}", "object": "response", "created_at": _finished(samples),
        "completed_at": _finished(samples) if complete else None,
        "status": "completed" if complete else "incomplete",
        "incomplete_details": None if complete else {"reason": "max_output_tokens"}, "error": None, "model": model,
        "output": [{"type": "message", "id": f"msg_{request_id}", "status": "completed" if complete else "incomplete",
                    "role": "assistant", "content": [content]}],
        "parallel_tool_calls": False, "tool_choice": "none", "tools": [],
        "instructions": echo.get("instructions"), "max_output_tokens": echo.get("max_output_tokens"),
        "metadata": echo.get("metadata") or {}, "temperature": echo.get("temperature", 1.0),
        "top_p": echo.get("top_p", 1.0), "text": echo.get("text") or {"format": {"type": "text"}},
        "truncation": "disabled", "background": False, "previous_response_id": None,
        "reasoning": None, "service_tier": "default", "user": None,
        "usage": {"input_tokens": usage["prompt_tokens"],
                  "input_tokens_details": {"cached_tokens": usage["prompt_tokens_details"]["cached_tokens"],
                                           "cache_write_tokens": 0},
                  "output_tokens": usage["completion_tokens"], "output_tokens_details": {"reasoning_tokens": 0},
                  "total_tokens": usage["total_tokens"]},
    }


def error_lines(rows: Iterable[dict], job_id: str) -> Iterator[dict]:
    """Error rows -> one OpenAI error line each."""
    for row in rows:
        custom_id = row["custom_id"] if row["custom_id"] is not None else f"line-{row['line']}"
        request_id = _request_id(job_id, custom_id)
        error = {"code": row["code"], "message": row["message"]}
        line = {"id": f"batch_req_{request_id}", "custom_id": custom_id, "response": None, "error": error}
        if row["code"] in _CLIENT_ERRORS:
            body = {"error": {"message": row["message"], "type": "invalid_request_error", "param": row.get("param"),
                              "code": row["code"]}}
            line.update(response={"status_code": 400, "request_id": request_id, "body": body}, error=None)
        yield line


def write_openai_files(prefix: Location, job_id: str, endpoint: str, model: str) -> None:
    """Write output.jsonl and errors.jsonl beside the job's parts (each streamed through a local file)."""
    rows = iter_output_rows(prefix)
    if endpoint == EMBEDDINGS_URL:
        lines = (_answered(job_id, custom_id, body) for custom_id, body in embedding_bodies(rows, model))
    else:
        lines = output_lines(rows, job_id, endpoint, model)
    _write_lines(prefix.child(OUTPUT_NAME), lines)
    _write_lines(prefix.child(ERRORS_NAME), error_lines(iter_output_rows(prefix, errors=True), job_id))


def _write_lines(target: Location, lines: Iterable[dict]) -> None:
    with tempfile.TemporaryDirectory(prefix="tide-openai-") as tmp:
        path = Path(tmp) / "lines.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for line in lines:
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
        target.commit_file(path)
