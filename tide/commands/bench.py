"""`tide bench`: the engine benchmark (benchmarks/engine.py), or with `--control-plane` the control-plane benchmark
(benchmarks/control_plane.py), or with `--embed` the embedding benchmark (benchmarks/embed.py); each parses its own
arguments."""
from __future__ import annotations

from tide.settings import Settings


def add_parser(sub, settings: Settings) -> None:
    sub.add_parser("bench", help="benchmark the engine (`tide bench --help`), the control plane on null engines "
                                 "(`tide bench --control-plane --help`), or embeddings (`tide bench --embed --help`)")


def run_bench(argv: list[str]) -> int:
    if "--embed" in argv:
        from tide.benchmarks.embed import main

        return main([a for a in argv if a != "--embed"])
    if "--control-plane" in argv:
        from tide.benchmarks.control_plane import main

        return main([a for a in argv if a != "--control-plane"])
    from tide.benchmarks.engine import main

    return main(argv)
