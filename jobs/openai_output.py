"""A batch job's results in OpenAI's batch output shape: one JSON line per request, made from the Parquet parts.

Output lines carry a `chat.completion` or `text_completion` body (all samples of a request as its choices, with
`usage`), or an embeddings `list` body (jobs/embedding_output.py); error lines carry the reason. Parquet stays the native format: these files are written beside the parts
when a batch finishes, and can be made at any time from the parts already committed.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterable, Iterator
from itertools import groupby
from pathlib import Path

from tide.jobs.embedding_output import embedding_bodies
from tide.jobs.embeddings import EMBEDDINGS_URL
from tide.jobs.results import iter_output_rows
from tide.jobs.rows import CHAT_URL
from tide.jobs.storage import Location

OUTPUT_NAME = "output.jsonl"
ERRORS_NAME = "errors.jsonl"
# Row errors that the request itself caused answer 400, as OpenAI's validation does; the rest (expiry, cancel,
# exhausted attempts) carry no response.
_CLIENT_ERRORS = {"invalid_json", "invalid_row", "invalid_field", "missing_field", "missing_prompt", "unknown_field",
                  "duplicate_custom_id", "mismatched_url", "invalid_request", "context_length_exceeded"}


def _request_id(job_id: str, custom_id: str) -> str:
    return hashlib.sha256(f"{job_id}/{custom_id}".encode()).hexdigest()[:24]


def output_lines(rows: Iterable[dict], job_id: str, endpoint: str, model: str, created: int) -> Iterator[dict]:
    """Result rows (in row, sample order) -> one OpenAI output line per request."""
    chat = endpoint == CHAT_URL
    for _, group in groupby(rows, key=lambda r: r["row_index"]):
        samples = list(group)
        first = samples[0]
        request_id = _request_id(job_id, first["custom_id"])
        usage = {"prompt_tokens": first["prompt_tokens"],
                 "completion_tokens": sum(s["completion_tokens"] for s in samples),
                 "prompt_tokens_details": {"cached_tokens": first["cached_prompt_tokens"] or 0}}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        body = {"id": ("chatcmpl-" if chat else "cmpl-") + request_id,
                "object": "chat.completion" if chat else "text_completion", "created": created, "model": model,
                "choices": [_choice(s, chat) for s in samples], "usage": usage}
        yield {"id": f"batch_req_{request_id}", "custom_id": first["custom_id"],
               "response": {"status_code": 200, "request_id": request_id, "body": body}, "error": None}


def _choice(sample: dict, chat: bool) -> dict:
    logprobs = None
    if sample.get("logprobs") is not None:  # token ids, not strings: the job side holds no tokenizer
        logprobs = {"content": [{"token_id": lp["token_id"], "logprob": lp["logprob"],
                                 "top_logprobs": lp["top"]} for lp in sample["logprobs"]]}
    choice = {"index": sample["sample_index"], "finish_reason": sample["finish_reason"], "logprobs": logprobs}
    if chat:
        choice["message"] = {"role": "assistant", "content": sample["text"]}
    else:
        choice["text"] = sample["text"]
    return choice


def error_lines(rows: Iterable[dict], job_id: str) -> Iterator[dict]:
    """Error rows -> one OpenAI error line each."""
    for row in rows:
        custom_id = row["custom_id"] if row["custom_id"] is not None else f"line-{row['line']}"
        request_id = _request_id(job_id, custom_id)
        error = {"code": row["code"], "message": row["message"]}
        line = {"id": f"batch_req_{request_id}", "custom_id": custom_id, "response": None, "error": error}
        if row["code"] in _CLIENT_ERRORS:
            body = {"error": {**error, "type": "invalid_request_error", "param": row.get("param"),
                              "line": row["line"]}}
            line.update(response={"status_code": 400, "request_id": request_id, "body": body}, error=None)
        yield line


def write_openai_files(prefix: Location, job_id: str, endpoint: str, model: str, created: int) -> None:
    """Write output.jsonl and errors.jsonl beside the job's parts (each streamed through a local file)."""
    rows = iter_output_rows(prefix)
    if endpoint == EMBEDDINGS_URL:
        lines = (_answered(job_id, custom_id, body) for custom_id, body in embedding_bodies(rows, model))
    else:
        lines = output_lines(rows, job_id, endpoint, model, created)
    _write_lines(prefix.child(OUTPUT_NAME), lines)
    _write_lines(prefix.child(ERRORS_NAME), error_lines(iter_output_rows(prefix, errors=True), job_id))


def _answered(job_id: str, custom_id: str, body: dict) -> dict:
    """The output line of a request answered with `body`."""
    request_id = _request_id(job_id, custom_id)
    return {"id": f"batch_req_{request_id}", "custom_id": custom_id,
            "response": {"status_code": 200, "request_id": request_id, "body": body}, "error": None}


def _write_lines(target: Location, lines: Iterable[dict]) -> None:
    with tempfile.TemporaryDirectory(prefix="tide-openai-") as tmp:
        path = Path(tmp) / "lines.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for line in lines:
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
        target.commit_file(path)
