"""What the infra files may name, taken from the code: `tide` subcommands and flags, settings, the queue names."""
from __future__ import annotations

import argparse
import re

import pytest

from tide.cli import build_parser
from tide.settings import Settings

# Variables that are not Tide settings but may be set for (or documented next to) Tide's containers, and why.
OTHER_VARIABLES = {
    "AWS_ENDPOINT_URL": "boto3: the S3-compatible endpoint (MinIO)",
    "AWS_ACCESS_KEY_ID": "boto3: S3 credentials",
    "AWS_SECRET_ACCESS_KEY": "boto3: S3 credentials",
    "AWS_DEFAULT_REGION": "boto3: the region S3 requests are signed for",
    "MINIO_ROOT_USER": "compose only: MinIO's root user, handed to Tide as AWS_ACCESS_KEY_ID",
    "MINIO_ROOT_PASSWORD": "compose only: MinIO's root password, handed to Tide as AWS_SECRET_ACCESS_KEY",
}

# Subcommands the infra files run that are still being added to the CLI, and where they come from. A command naming
# one of these is checked once the parser has it, and skipped (with this reason) until then.
PENDING_SUBCOMMANDS = {"beat": "`tide beat` (the scheduler) arrives with the evals issue"}


def setting_variables() -> set[str]:
    prefix = Settings.model_config.get("env_prefix", "")
    return {(prefix + name).upper() for name in Settings.model_fields}


def unknown_variables(names) -> list[str]:
    known = setting_variables() | set(OTHER_VARIABLES)
    return sorted(set(names) - known)


def tide_parser() -> argparse.ArgumentParser:
    return build_parser(Settings(_env_file=None))


def subcommands(parser: argparse.ArgumentParser) -> set[str]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(actions[0].choices)


def parse_tide_args(args: list[str]) -> argparse.Namespace:
    """Parse `tide ARGS` with the real parser; a command it refuses fails the test, a pending one skips it."""
    parser = tide_parser()
    assert args, "empty tide command"
    if args[0] not in subcommands(parser) and args[0] in PENDING_SUBCOMMANDS:
        pytest.skip(PENDING_SUBCOMMANDS[args[0]])
    try:
        return parser.parse_args(args)
    except SystemExit as exc:  # argparse reports bad arguments on stderr, then exits
        pytest.fail(f"`tide {' '.join(args)}` is refused by tide's parser (exit {exc.code})")


_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def interpolate(text: str, used: set[str] | None = None) -> str:
    """Compose's `${NAME:-default}` interpolation with every variable unset, so defaults apply; `$$` is `$`."""
    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        if used is not None:
            used.add(match.group(1))
        return (match.group(3) or "") if match.group(2) in (":-", "-") else ""
    return _VARIABLE.sub(replace, text)


def interpolate_all(value, used: set[str] | None = None):
    if isinstance(value, str):
        return interpolate(value, used)
    if isinstance(value, list):
        return [interpolate_all(v, used) for v in value]
    if isinstance(value, dict):
        return {k: interpolate_all(v, used) for k, v in value.items()}
    return value
