"""`tide bench --peer vllm`: the same workload on vLLM's CPU build, in a subprocess from vLLM's own environment.

The parent side (`run_vllm`) writes the workload (token ids, lengths, dtype, batch limits) to a JSON file and runs
this file as a script with the peer's Python; the script imports only vLLM and the standard library, runs the
prompts once with prefix caching off, and prints one result line of JSON: wall time and every request's token ids.
`VLLM_CPU_NUM_OF_RESERVED_CPU=0` is set so that vLLM computes on every core (by default it keeps one for its
scheduler). Install notes: README.md, "Tuning on a CPU".
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

RESULT_PREFIX = "TIDE_PEER_RESULT "


def run_vllm(python: str, model_dir: str, dtype: str, prompts: list[list[int]], max_tokens: int, ignore_eos: bool,
             max_num_seqs: int, max_num_batched_tokens: int, threads: int, timeout_s: float = 3600) -> dict:
    """Runs the workload on vLLM with `python`; returns {"seconds", "token_ids", "load_seconds"}."""
    spec = dict(model_dir=model_dir, dtype=dtype, prompts=prompts, max_tokens=max_tokens, ignore_eos=ignore_eos,
                max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                max_model_len=max(len(p) for p in prompts) + max_tokens + 16)
    env = dict(os.environ, VLLM_CPU_NUM_OF_RESERVED_CPU="0", OMP_NUM_THREADS=str(threads))
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    try:
        # -P keeps this file's folder off the child's sys.path (benchmarks/kernels.py would shadow the `kernels`
        # package that transformers looks for), and vLLM's `python -m` helpers put their working directory there,
        # so that is not the checkout either
        proc = subprocess.run([python, "-P", __file__, f.name], capture_output=True, text=True, env=env,
                              timeout=timeout_s, cwd=tempfile.gettempdir())
    finally:
        os.unlink(f.name)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    raise RuntimeError(f"the vLLM peer failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")


def _child_main(spec_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    started = time.perf_counter()
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=spec["model_dir"], dtype=spec["dtype"], max_num_seqs=spec["max_num_seqs"],
              max_num_batched_tokens=spec["max_num_batched_tokens"], max_model_len=spec["max_model_len"],
              enable_prefix_caching=False, seed=0)
    load_seconds = time.perf_counter() - started
    params = SamplingParams(temperature=0.0, max_tokens=spec["max_tokens"], ignore_eos=spec["ignore_eos"])
    prompts = [TokensPrompt(prompt_token_ids=p) for p in spec["prompts"]]
    started = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - started
    token_ids = [list(out.outputs[0].token_ids) for out in outputs]
    print(RESULT_PREFIX + json.dumps(dict(seconds=seconds, token_ids=token_ids, load_seconds=load_seconds)),
          flush=True)


def main(argv: list[str] | None = None) -> int:
    """The peer's side, as `run_vllm` starts it: run the workload file and print the result line."""
    parser = argparse.ArgumentParser(prog="python -P -m tide.benchmarks.peer_vllm", description="The peer's side of "
                                     "`tide bench --peer vllm`, run by vLLM's own Python: one workload, one JSON line.")
    parser.add_argument("spec", help="the workload as JSON, as run_vllm writes it")
    _child_main(parser.parse_args(argv).spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
