"""What a shard attempt produced: result rows converted from the engine's outputs, error rows, progress counts and
the sampled series, until they are committed."""
from __future__ import annotations

from dataclasses import dataclass, field

from tide.engine.outputs import RequestOutput, TokenLogprob
from tide.jobs.report.series import SeriesRecorder
from tide.jobs.rows import ErrorRow, PromptRow
from tide.jobs.shards import error_rows
from tide.jobs.state import ShardProgress, ShardStatus
from tide.jobs.writers import ResultRow


@dataclass
class Outcome:
    status: ShardStatus = ShardStatus.DONE
    results: list[ResultRow] = field(default_factory=list)
    errors: list[ErrorRow] = field(default_factory=list)
    progress: ShardProgress = field(default_factory=ShardProgress)
    series: SeriesRecorder = field(default_factory=SeriesRecorder)  # sampled each poll for the job's report


def record(outcome: Outcome, row: PromptRow, output: RequestOutput) -> None:
    """One finished request: an error row, nothing (aborted), or a result row per sample with its metrics."""
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
            logprobs=_logprobs(sample.logprobs) if row.params.logprobs is not None else None,
            prompt_logprobs=_logprobs(output.prompt_logprobs) if sample.index == 0 else None))
    progress = outcome.progress
    progress.completed += 1
    progress.prompt_tokens += metrics.prompt_tokens
    progress.completion_tokens += metrics.completion_tokens
    progress.cached_prompt_tokens += metrics.cached_prompt_tokens
    progress.spec_proposed_tokens += metrics.spec_proposed_tokens
    progress.spec_accepted_tokens += metrics.spec_accepted_tokens


def expire(outcome: Outcome, rows: list[PromptRow]) -> Outcome:
    """The job's deadline passed: rows with neither a result nor an error become `batch_expired` error rows."""
    seen = {r.row_index for r in outcome.results} | {e.row for e in outcome.errors}
    outcome.errors += error_rows.expired([r for r in rows if r.row not in seen])
    outcome.progress.failed = len(outcome.errors)
    return outcome


def _logprobs(logprobs: list[TokenLogprob | None] | None) -> list[dict | None] | None:
    if logprobs is None:
        return None
    return [None if lp is None else {"token_id": lp.token_id, "logprob": lp.logprob,
                                     "top": [{"token_id": t, "logprob": p} for t, p in lp.top]} for lp in logprobs]
