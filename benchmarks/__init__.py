"""Every benchmark and workload generator, installed as `tide.benchmarks`; the library packages never import it.

Each module runs as `python -P -m tide.benchmarks.<name>`; `tide bench` is `benchmarks/engine.py` and `tide tune`
draws its prompts from `benchmarks/workloads.py`.
"""
