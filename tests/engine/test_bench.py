"""`tide bench` on a tiny random model: both workloads run on both sides, the ratios and agreement print."""
from __future__ import annotations

from tide.benchmarks.engine import main


def test_bench_prints_ratios_for_both_workloads(tiny_model_dir, capsys) -> None:
    argv = ["--model", str(tiny_model_dir("llama")), "--dtype", "float32", "--workload", "both",
            "--num-prompts", "3", "--input-len", "8", "--output-len", "5", "--hf-batch-sizes", "2,3",
            "--max-num-seqs", "4", "--kv-cache-gib", "0.01", "--threads", "1", "--device", "cpu", "--warmup"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    ratio_lines = [line for line in out.splitlines() if line.strip().startswith("ratio tide/hf")]
    assert len(ratio_lines) == 2, out
    # fp32 greedy: Tide's outputs are HF's, and the bench compares them request by request.
    assert all(line.endswith("identical outputs 3/3") for line in ratio_lines), out
    # The untimed warm-up pass is not in the report: 1 prefill step and 4 decode steps for 5 tokens each.
    assert "engine: 5 steps" in out, out
    # The fixed workload ignores EOS, so each side generates exactly 3 x 5 tokens.
    assert out.count("(15 output tokens in") == 3, out  # tide and both HF batch sizes
    assert "of the best linear-shape rate measured" in out
    assert "paged attention" in out
    assert any(line.startswith("paged attention: ") for line in out.splitlines()), out


FAKE_PEER = """#!{python}
import json, sys
spec = json.load(open(sys.argv[-1]))  # called as: python -P peer_vllm.py SPEC
tokens = [[7] * spec["max_tokens"] for _ in spec["prompts"]]
print("TIDE_PEER_RESULT " + json.dumps(dict(seconds=2.0, token_ids=tokens, load_seconds=1.0)))
"""


def test_bench_runs_the_peer_and_prints_the_ratio(tiny_model_dir, capsys, tmp_path) -> None:
    """--peer vllm with a stand-in for the peer's Python: the subprocess protocol, the ratio and the match count."""
    import sys

    fake = tmp_path / "python"
    fake.write_text(FAKE_PEER.format(python=sys.executable))
    fake.chmod(0o755)
    argv = ["--model", str(tiny_model_dir("llama")), "--dtype", "float32", "--workload", "fixed",
            "--num-prompts", "2", "--input-len", "8", "--output-len", "4", "--skip-hf", "--max-num-seqs", "4",
            "--kv-cache-gib", "0.01", "--threads", "1", "--peer", "vllm", "--peer-python", str(fake),
            "--twin-baseline"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "(8 output tokens in 2.0 s)" in out, out
    assert "ratio tide/vllm" in out and "identical outputs" in out, out
    assert "tide-twins" in out and "ratio tide/tide-twins" in out, out
