"""`tide lm-eval ARGS...`: lm-evaluation-harness's own command line, unchanged, with Tide's `tide` model registered
first (lm-eval's CLI finds only its built-in models)."""
from __future__ import annotations

import sys

from tide.options import UsageError
from tide.settings import Settings


def add_parser(sub, settings: Settings) -> None:
    sub.add_parser("lm-eval", help="lm-evaluation-harness with Tide as `--model tide` (see `tide lm-eval --help`)",
                   add_help=False)


def run_lm_eval(argv: list[str]) -> int:
    """Run lm-eval's CLI on `argv` as if it were `lm-eval ARGV...`; returns its exit status."""
    try:
        from lm_eval.__main__ import cli_evaluate

        import tide.lmeval  # noqa: F401  (registers the model)
    except ImportError as exc:
        raise UsageError(str(exc)) from None
    saved = sys.argv
    sys.argv = ["tide lm-eval", *argv]  # lm-eval's CLI reads sys.argv itself
    try:
        cli_evaluate()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = saved
    return 0
