"""Follow a job until it ends: a progress bar with request counts, output tokens/s and ETA (`tide wait`, `tide run`)."""
from __future__ import annotations

import time
from collections.abc import Callable

from tqdm import tqdm

from tide.jobs.lifecycle import job_status
from tide.jobs.state import Job
from tide.jobs.store import JobStore


def wait_for_job(store: JobStore, job_id: str, poll_s: float = 1.0, show: bool = True,
                 timeout_s: float | None = None, check: Callable[[], None] = lambda: None) -> Job:
    """Poll the job until its status is terminal; `check` may raise to stop waiting (e.g. a crashed local runner)."""
    job = job_status(store, job_id)
    started = time.monotonic()
    bar = tqdm(total=job.request_counts.total or None, unit="req", desc=job_id, disable=not show, leave=True)
    try:
        while not job.status.terminal:
            check()
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                raise TimeoutError(f"job {job_id} still {job.status.value} after {timeout_s:.0f} s")
            time.sleep(poll_s)
            job = job_status(store, job_id)
            _update(bar, job, time.monotonic() - started)
    finally:
        bar.close()
    return job


def _update(bar: tqdm, job: Job, elapsed: float) -> None:
    counts = job.request_counts
    if bar.total != counts.total and counts.total:
        bar.total = counts.total
    bar.n = counts.completed + counts.failed
    bar.set_postfix(status=job.status.value, failed=counts.failed,
                    out_tok_s=f"{job.usage.completion_tokens / max(elapsed, 1e-9):.1f}", refresh=False)
    bar.refresh()
