"""`tide worker` and `tide run` speculative flags: defaults from Settings, which equal the engine's own defaults."""
from __future__ import annotations

from tide.cli import build_parser
from tide.engine.config import EngineConfig
from tide.options import speculative_config
from tide.settings import Settings


def test_flag_defaults_are_the_engine_defaults():
    args = build_parser(Settings(_env_file=None)).parse_args(["worker"])
    config = speculative_config(args)
    defaults = EngineConfig()
    assert config == {name: getattr(defaults, name) for name in config}


def test_flags_reach_the_engine_config_for_worker_and_run():
    settings = Settings(_env_file=None, speculative="ngram", spec_max_running=3)
    for argv in (["worker"], ["run", "in.jsonl"]):
        args = build_parser(settings).parse_args(argv + ["--num-speculative-tokens", "6"])
        config = EngineConfig(**speculative_config(args))
        assert (config.speculative, config.num_speculative_tokens, config.spec_max_running) == ("ngram", 6, 3)
