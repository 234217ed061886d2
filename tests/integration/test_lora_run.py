"""`tide run` on a file whose rows name three LoRA adapters (and some none): every row written once, each equal to
its merged-weights reference; an unknown adapter is an error row naming it; the report counts tokens per adapter."""
from __future__ import annotations

import json
import subprocess

import pyarrow.parquet as pq
import torch
from transformers import AutoModelForCausalLM

from tests.helpers.hf_reference import hf_greedy
from tests.helpers.lora import ALL_LINEAR, make_adapter, merged_model
from tests.helpers.paths import REPO
from tests.helpers.rows import write_jsonl
from tide.engine.loader import load_tokenizer
from tide.workers.processes import tide_command

MAX_TOKENS = 8
PROMPTS = ["The river at dawn", "Seven ways to fold a map", "A letter to the editor about trains",
           "Notes on the migration of eels", "Why the kettle sings"]


def test_rows_of_three_adapters_match_their_merged_references(tiny_model_dir, tmp_path):
    model_dir = tiny_model_dir("llama")
    adapters = {"support": make_adapter(model_dir, tmp_path / "support", 8, seed=1, targets=ALL_LINEAR),
                "legal": make_adapter(model_dir, tmp_path / "legal", 16, seed=2),
                "french": make_adapter(model_dir, tmp_path / "french", 4, seed=3, targets=["o_proj", "up_proj"])}
    names = [None, "support", "legal", "french"]
    rows, expected = [], {}
    for i, prompt in enumerate(PROMPTS * 2):
        name = names[i % len(names)]
        if i == 5:  # an OpenAI batch line naming its adapter in `model`
            rows.append({"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions",
                         "body": {"model": f"tiny:{name}", "prompt": prompt}})
        else:
            rows.append({"id": f"r{i}", "prompt": prompt, **({"lora": name} if name else {})})
        expected[f"r{i}"] = (name, prompt)
    rows.append({"id": "unknown", "prompt": PROMPTS[0], "lora": "nope"})
    source = write_jsonl(tmp_path / "rows.jsonl", rows)
    flags = [arg for name, path in adapters.items() for arg in ("--adapter", f"{name}={path}")]
    result = subprocess.run(
        tide_command("run", str(source), "--output", str(tmp_path / "out"), "--model", str(model_dir),
                     "--dtype", "float32", "--max-tokens", str(MAX_TOKENS), "--temperature", "0",
                     "--sampling", '{"ignore_eos": true}', "--max-loras", "2", "--no-progress", *flags),
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    (job_dir,) = [p for p in (tmp_path / "out").iterdir() if p.is_dir()]

    results = pq.read_table(job_dir / "part-00000.parquet").to_pylist()
    assert sorted(r["custom_id"] for r in results) == sorted(expected)  # every row once
    tokenizer = load_tokenizer(model_dir)
    references = {None: AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()}
    references |= {name: merged_model(model_dir, path) for name, path in adapters.items()}
    for row in results:
        name, prompt = expected[row["custom_id"]]
        tokens, _ = hf_greedy(references[name], tokenizer(prompt).input_ids, MAX_TOKENS)
        assert row["text"] == tokenizer.decode(tokens, skip_special_tokens=True), (row["custom_id"], name)

    (error,) = pq.read_table(job_dir / "errors-00000.parquet").to_pylist()
    assert error["custom_id"] == "unknown" and "unknown LoRA adapter 'nope'" in error["message"]
    summary = json.loads((job_dir / "summary.json").read_text())
    assert {name: usage["requests"] for name, usage in summary["adapters"].items()} == {
        "support": 3, "legal": 2, "french": 2}
    assert "adapter support: 3 requests" in result.stdout
