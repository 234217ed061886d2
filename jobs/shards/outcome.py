"""What a shard attempt produced: result rows converted from the engine's outputs, error rows, progress counts and
the sampled series, until they are committed."""
from __future__ import annotations

from dataclasses import dataclass, field

from tide.engine.embeddings import EmbeddingOutput
from tide.engine.outputs import RequestOutput, TokenLogprob
from tide.jobs.embedding_output import EmbeddingResult
from tide.jobs.embeddings import EmbedRow
from tide.jobs.engine_client import EngineClient
from tide.jobs.inputs import InputRow
from tide.jobs.report.series import SeriesRecorder
from tide.jobs.rows import ErrorRow
from tide.jobs.shards import error_rows
from tide.jobs.state import AdapterUsage, ShardProgress, ShardStatus
from tide.jobs.writers import ResultRow


@dataclass
class Outcome:
    status: ShardStatus = ShardStatus.DONE
    results: list[ResultRow] = field(default_factory=list)
    errors: list[ErrorRow] = field(default_factory=list)
    progress: ShardProgress = field(default_factory=ShardProgress)
    series: SeriesRecorder = field(default_factory=SeriesRecorder)  # sampled each poll for the job's report


def record(outcome: Outcome, row: InputRow, output: RequestOutput | EmbeddingOutput, engine: EngineClient,
           now: float) -> None:
    """One finished request (at `now`): an error row, nothing (aborted), or a result row per sample with its
    metrics, the engine's fingerprint and, when asked for, logprobs with each token's text and bytes."""
    if isinstance(output, EmbeddingOutput):
        _record_embedding(outcome, row, output, now)
        return
    if output.error is not None:
        outcome.errors.append(error_rows.failed(row, output.error_code, output.error))
        return
    if output.finish_reason == "abort":  # cancelled or expired before it finished: neither a result nor an error
        return
    metrics = output.metrics
    for sample in output.outputs:
        outcome.results.append(ResultRow(
            custom_id=row.custom_id, row_index=row.row, sample_index=sample.index, text=sample.text,
            finish_reason=sample.finish_reason, prompt_tokens=metrics.prompt_tokens,
            completion_tokens=len(sample.token_ids), cached_prompt_tokens=metrics.cached_prompt_tokens,
            ttft_s=metrics.ttft, latency_s=metrics.e2e_latency, tpot_s=metrics.tpot,
            logprobs=_logprobs(sample.logprobs, engine) if row.params.logprobs is not None else None,
            prompt_logprobs=_logprobs(output.prompt_logprobs, engine) if sample.index == 0 else None,
            finished_at=now, system_fingerprint=engine.fingerprint(), echo=row.echo))
    progress = outcome.progress
    progress.completed += 1
    progress.prompt_tokens += metrics.prompt_tokens
    progress.completion_tokens += metrics.completion_tokens
    progress.cached_prompt_tokens += metrics.cached_prompt_tokens
    progress.spec_proposed_tokens += metrics.spec_proposed_tokens
    progress.spec_accepted_tokens += metrics.spec_accepted_tokens
    if row.params.lora is not None:
        usage = progress.adapters.setdefault(row.params.lora, AdapterUsage())
        usage.requests += 1
        usage.prompt_tokens += metrics.prompt_tokens
        usage.completion_tokens += metrics.completion_tokens


def _record_embedding(outcome: Outcome, row: EmbedRow, output: EmbeddingOutput, now: float) -> None:
    """An embedding request: an error row, nothing (aborted), or a result row per input."""
    if output.error is not None:
        outcome.errors.append(error_rows.failed(row, output.error_code, output.error))
        return
    if output.finish_reason == "abort":
        return
    for index, (vector, tokens) in enumerate(zip(output.embeddings, output.num_tokens)):
        outcome.results.append(EmbeddingResult(
            custom_id=row.custom_id, row_index=row.row, input_index=index, embedding=vector, tokens=tokens,
            latency_s=output.latency_s, encoding_format=row.encoding_format, finished_at=now))
    outcome.progress.completed += 1
    outcome.progress.prompt_tokens += output.prompt_tokens


def expire(outcome: Outcome, rows: list[InputRow]) -> Outcome:
    """The job's deadline passed: rows with neither a result nor an error become `batch_expired` error rows."""
    seen = {r.row_index for r in outcome.results} | {e.row for e in outcome.errors}
    outcome.errors += error_rows.expired([r for r in rows if r.row not in seen])
    outcome.progress.failed = len(outcome.errors)
    return outcome


def _logprobs(logprobs: list[TokenLogprob | None] | None, engine: EngineClient) -> list[dict | None] | None:
    """Each token's logprob with its text and bytes; a None entry (an unscored prompt token) stays None."""
    if logprobs is None:
        return None
    scored = [lp for lp in logprobs if lp is not None]
    ids = sorted({lp.token_id for lp in scored} | {t for lp in scored for t, _ in lp.top})
    pieces = dict(zip(ids, engine.token_bytes(ids)))

    def token(token_id: int, logprob: float) -> dict:
        piece = pieces[token_id]
        return {"token_id": token_id, "logprob": logprob, "token": token_text(piece), "bytes": list(piece)}

    return [None if lp is None else {**token(lp.token_id, lp.logprob), "top": [token(t, p) for t, p in lp.top]}
            for lp in logprobs]


def token_text(piece: bytes) -> str:
    """A token's text; bytes that end (or start) inside a UTF-8 character are shown as `\\xNN` escapes."""
    return piece.decode("utf-8", errors="backslashreplace")
