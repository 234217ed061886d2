"""`tide run` (the README's main command) end to end in one process, on the tiny model and on all-MiniLM-L6-v2
(embeddings): no Redis, no S3."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tests.helpers.embeddings import MODEL, cosines, embedding_lines, multilingual_texts, reference
from tests.helpers.paths import REPO
from tests.helpers.rows import read_parts, write_jsonl
from tide.engine.loader import resolve_model
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


def _tide_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(tide_command("run", *args, "--no-progress"), cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def test_tide_run_embeds_a_file_of_openai_embedding_lines_on_embedded_defaults(tmp_path):
    texts = multilingual_texts(60, seed=5, long_share=0.2)
    lines = embedding_lines(texts) + [
        {"custom_id": "pair", "method": "POST", "url": "/v1/embeddings",
         "body": {"model": MODEL, "input": texts[:2], "encoding_format": "base64"}},
        {"custom_id": "chat", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}},
    ]
    # No --model, no --task: the first line names both.
    result = _tide_run(str(write_jsonl(tmp_path / "batch.jsonl", lines)), "--output", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "completed on all-minilm-l6-v2" in result.stdout and "61 completed, 1 failed of 62" in result.stdout
    (job_dir,) = (tmp_path / "out").iterdir()
    rows = read_parts(job_dir)
    assert [(r["custom_id"], r["input_index"]) for r in rows] == [
        *((f"emb-{i}", 0) for i in range(60)), ("pair", 0), ("pair", 1)]
    vectors = np.array([r["embedding"] for r in rows], np.float32)
    expected = reference(resolve_model(MODEL), texts)
    # Embedded defaults: dtype auto is bfloat16 on a CPU with native bf16 (float32 elsewhere); fp32 is held to 0.9999
    # below and in tests/engine/test_embeddings.py.
    assert cosines(vectors[:60], expected).min() >= 0.999
    assert cosines(vectors[60:], expected[:2]).min() >= 0.999
    assert max(r["tokens"] for r in rows) == 256  # the long ones, cut to the model's limit
    (error,) = read_parts(job_dir, "errors-")
    assert (error["custom_id"], error["code"], error["param"]) == ("chat", "invalid_field", "url")
    assert "task embed" in error["message"]


def test_tide_run_embeds_a_parquet_corpus_through_its_columns(tmp_path):
    corpus = tmp_path / "corpus.parquet"
    texts = multilingual_texts(30, seed=6)
    pq.write_table(pa.table({"doc_id": [f"d{i}" for i in range(30)], "text": texts}), corpus)
    result = _tide_run(str(corpus), "--model", MODEL, "--input-column", "text", "--id-column", "doc_id",
                       "--shard-rows", "8", "--dtype", "float32", "--output", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    (job_dir,) = (tmp_path / "out").iterdir()
    rows = read_parts(job_dir)
    assert [r["custom_id"] for r in rows] == [f"d{i}" for i in range(30)]
    schema = pq.read_schema(job_dir / "part-00000.parquet")
    assert schema.field("embedding").type == pa.list_(pa.float32(), 384)
    expected = reference(resolve_model(MODEL), texts)
    assert cosines(np.array([r["embedding"] for r in rows], np.float32), expected).min() >= 0.9999
