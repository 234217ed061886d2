"""`tide bench`: the engine benchmark (benchmarks/engine.py), which parses its own arguments."""
from __future__ import annotations

from tide.settings import Settings


def add_parser(sub, settings: Settings) -> None:
    sub.add_parser("bench", help="benchmark the engine (see `tide bench --help`)")


def run_bench(argv: list[str]) -> int:
    from tide.benchmarks.engine import main

    return main(argv)
