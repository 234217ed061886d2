"""`tide run` (the README's main command) end to end in one process, on the tiny model: no Redis, no S3."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pyarrow.parquet as pq

from tests.helpers.paths import REPO
from tide.workers.processes import tide_command


def test_tide_run_writes_results_summary_and_prints_a_report(tiny_model_dir, tmp_path):
    examples = REPO / "examples" / "prompts.jsonl"
    # From the checkout's root, where its top-level folders (kernels/, ...) sit beside Hugging Face's `kernels`.
    result = subprocess.run(tide_command("run", str(examples), "--output", str(tmp_path), "--model",
                                         str(tiny_model_dir("llama")), "--dtype", "float32", "--max-tokens", "8",
                                         "--no-progress"), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "completed" in result.stdout and "output tok/s" in result.stdout
    (job_dir,) = [p for p in Path(tmp_path).iterdir() if p.is_dir()]
    expected = [json.loads(line).get("custom_id") or json.loads(line).get("id")
                for line in examples.read_text().splitlines()]
    ids = [r["custom_id"] for r in pq.read_table(job_dir / "part-00000.parquet").to_pylist()]
    assert ids == expected
    summary = json.loads((job_dir / "summary.json").read_text())
    assert summary["request_counts"] == {"total": 24, "completed": 24, "failed": 0}
