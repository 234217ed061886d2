"""How the lm-eval backend runs a list of rows as one Tide job and gets each row's result back.

- `SpecRunner`: the rows as a JSONL file under a work directory (local or s3://), one `JobSpec` through an
  `Executor` (in this process, as `tide run` does, or queued to the workers through Redis), results read from the
  job's committed parts.
- `ApiRunner`: the rows uploaded to a Tide API (`/v1/files`), a native job (`/v1/jobs`), results streamed back.

Either way a job whose rows did not all finish raises `JobFailed` naming the rows: lm-eval needs an answer for every
request, and a score over fewer requests than the task has would be silently wrong.
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from typing import Any, Protocol

from tide.jobs.evals.runner import Executor
from tide.jobs.results import iter_output_rows
from tide.jobs.specs import JobSpec
from tide.jobs.storage import StorageConfig, resolve

_TERMINAL = {"completed", "failed", "expired", "cancelled"}


class JobFailed(RuntimeError):
    """A job of lm-eval requests ended without a result for every request."""


class JobRunner(Protocol):
    def run(self, rows: list[dict[str, Any]], label: str) -> dict[str, dict[str, Any]]:
        """Run `rows` (each with an `id`) as one job; the result row of each id. Raises JobFailed."""


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()


def collect(job: str, status: str, rows: list[dict[str, Any]], results: list[dict[str, Any]],
            errors: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each row's result (its first sample), or JobFailed naming how many rows have none and why the first failed."""
    by_id = {r["custom_id"]: r for r in results if r.get("sample_index", 0) == 0}
    missing = [row["id"] for row in rows if row["id"] not in by_id]
    if not missing:
        return by_id
    why = {e.get("custom_id"): e.get("message") for e in errors}
    first = missing[0]
    raise JobFailed(f"job {job} ended {status} with no result for {len(missing)} of {len(rows)} requests; "
                    f"request {first}: {why.get(first) or 'no result (the job stopped before it)'}")


class SpecRunner:
    """Rows -> `{workdir}/{label}-{id}/input.jsonl` -> one job through `executor` -> result rows by id."""

    def __init__(self, executor: Executor, storage: StorageConfig, workdir: str, model: str,
                 shard_rows: int = 256) -> None:
        self.executor, self.storage, self.workdir = executor, storage, workdir
        self.model, self.shard_rows = model, shard_rows
        self.jobs: list[tuple[str, str]] = []  # (job id, final status) of each job run so far

    def run(self, rows: list[dict[str, Any]], label: str) -> dict[str, dict[str, Any]]:
        job_dir = resolve(self.workdir, self.storage).child(f"{label}-{uuid.uuid4().hex[:8]}")
        job_dir.child("input.jsonl").write_bytes(jsonl(rows))
        spec = JobSpec(input=job_dir.child("input.jsonl").uri, format="jsonl", model=self.model,
                       output=job_dir.child("job").uri, metadata={"lm_eval": label}, shard_rows=self.shard_rows)
        job = self.executor.execute(spec)
        self.jobs.append((job.id, job.status.value))
        prefix = resolve(job.output_prefix, self.storage)
        results, errors = list(iter_output_rows(prefix)), list(iter_output_rows(prefix, errors=True))
        return collect(job.id, job.status.value, rows, results, errors)


class ApiRunner:
    """The same through a Tide API: upload, submit a native job, poll it, stream its results (bearer key)."""

    def __init__(self, url: str, key: str, model: str, poll_s: float = 1.0, timeout_s: float | None = None) -> None:
        self.url, self.key, self.model = url.rstrip("/").removesuffix("/v1"), key, model  # `tide stack` adds /v1
        self.poll_s, self.timeout_s = poll_s, timeout_s

    def run(self, rows: list[dict[str, Any]], label: str) -> dict[str, dict[str, Any]]:
        file_id = self._upload(jsonl(rows), f"lm-eval-{label}.jsonl")["id"]
        job = self._call("POST", "/v1/jobs", json.dumps({"input": file_id, "format": "jsonl", "model": self.model,
                                                         "metadata": {"lm_eval": label}}).encode(),
                         {"Content-Type": "application/json"})
        job = self._wait(job)
        results = self._lines(f"/v1/jobs/{job['id']}/results")
        errors = self._lines(f"/v1/jobs/{job['id']}/results?errors=true")
        return collect(job["id"], job["status"], rows, results, errors)

    def _wait(self, job: dict[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        while job["status"] not in _TERMINAL:
            if self.timeout_s is not None and time.monotonic() - started > self.timeout_s:
                raise TimeoutError(f"job {job['id']} still {job['status']} after {self.timeout_s:.0f} s")
            time.sleep(self.poll_s)
            job = self._call("GET", f"/v1/jobs/{job['id']}")
        return job

    def _upload(self, data: bytes, filename: str) -> dict[str, Any]:
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
                f"Content-Type: application/jsonl\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
        return self._call("POST", "/v1/files", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})

    def _lines(self, path: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self._send("GET", path).splitlines() if line.strip()]

    def _call(self, method: str, path: str, body: bytes | None = None,
              headers: dict[str, str] | None = None) -> dict[str, Any]:
        return json.loads(self._send(method, path, body, headers))

    def _send(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> bytes:
        request = urllib.request.Request(self.url + path, data=body, method=method,
                                         headers={"Authorization": f"Bearer {self.key}", **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            raise JobFailed(f"{method} {self.url}{path} answered {exc.code}: {detail}") from None
        except urllib.error.URLError as exc:
            raise JobFailed(f"cannot reach the Tide API at {self.url}: {exc.reason}") from None
