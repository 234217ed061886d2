"""`tide lm-eval`: lm-eval's own command line with Tide's model, on embedded defaults (nothing else running)."""
from __future__ import annotations

import json
import os
import subprocess

from tests.helpers.lmeval_tasks import write_tasks
from tide.workers.processes import tide_command


def test_tide_lm_eval_runs_local_tasks_in_process_and_writes_lm_evals_files(smollm2_dir, tmp_path):
    include = write_tasks(tmp_path / "tasks")
    env = {k: v for k, v in os.environ.items() if k not in ("TIDE_REDIS_URL", "TIDE_API_URL", "TIDE_API_KEY")}
    out = tmp_path / "out"
    result = subprocess.run(tide_command("lm-eval", "--model", "tide", "--model_args",
                                         "model=smollm2-135m,dtype=float32", "--tasks", "tide_mc,tide_gen",
                                         "--include_path", str(include), "--log_samples", "--output_path", str(out)),
                            env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "|tide_mc " in result.stdout and "|tide_gen" in result.stdout  # lm-eval's table
    (folder,) = out.iterdir()
    names = sorted(p.name.split("_20")[0] for p in folder.iterdir())
    assert names == ["results", "samples_tide_gen", "samples_tide_mc"]
    results = json.loads(next(folder.glob("results_*.json")).read_text())
    assert results["results"]["tide_mc"]["acc,none"] >= 0.5
    assert results["config"]["model"] == "tide" and results["config"]["engine"].startswith("tide ")
    assert results["config"]["backend"] == "in this process (float32)"  # embedded: no Redis, no API
    samples = [json.loads(line) for line in next(folder.glob("samples_tide_gen_*.jsonl")).read_text().splitlines()]
    assert len(samples) == 5 and all(isinstance(s["filtered_resps"][0], str) for s in samples)
