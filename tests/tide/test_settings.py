"""One settings model for every entry point: environment and .env are read, flags default from it, and the README's
table lists every setting."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from tide.cli import build_parser, main
from tide.key_policies import owner_of
from tide.settings import Settings, hash_key

README = Path(__file__).resolve().parents[2] / "README.md"


def test_environment_and_env_file_are_read(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("TIDE_MODEL=from-dotenv\nTIDE_CONCURRENCY=5\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TIDE_CONCURRENCY", "7")  # the environment wins over .env
    monkeypatch.setenv("TIDE_API_KEYS", "alpha, sha256:" + "AB" * 32)
    settings = Settings()
    assert (settings.model, settings.concurrency) == ("from-dotenv", 7)
    assert settings.key_hashes() == {hash_key("alpha"), "ab" * 32}


def test_flags_default_from_settings():
    settings = Settings(_env_file=None, redis_url="redis://elsewhere:1/2", model="m", concurrency=9)
    args = build_parser(settings).parse_args(["worker"])
    assert (args.redis_url, args.model, args.concurrency) == ("redis://elsewhere:1/2", "m", 9)


def test_a_bad_setting_is_one_line_naming_it(monkeypatch, capsys):
    monkeypatch.setenv("TIDE_API_PORT", "not-a-port")
    from tide.settings import get_settings

    get_settings.cache_clear()
    try:
        assert main(["status", "job_x"]) == 2
    finally:
        get_settings.cache_clear()
    assert "api_port" in capsys.readouterr().err


def test_the_readme_table_lists_every_setting_with_its_default():
    text = README.read_text()
    table = text[text.index("<!-- settings-table -->"):text.index("<!-- /settings-table -->")]
    rows = {m.group(1): m.group(2).strip() for m in re.finditer(r"^\| `(TIDE_[A-Z_]+)` \|([^|]*)\|", table, re.M)}
    for name, field in Settings.model_fields.items():
        default = field.default if field.default_factory is None else field.default_factory()
        shown = "" if default is None or default in ([], {}) else f"`{default}`"
        assert rows.get(f"TIDE_{name.upper()}") == shown, f"README settings table: TIDE_{name.upper()}"
    assert len(rows) == len(Settings.model_fields)


def test_settings_refuse_bad_values():
    with pytest.raises(ValidationError):
        Settings(_env_file=None, concurrency=0)


def test_tide_run_takes_a_webhook():
    args = build_parser(Settings(_env_file=None)).parse_args(["run", "p.jsonl", "--webhook", "https://h.example/x"])
    assert args.webhook == "https://h.example/x"


def test_worker_takes_tensor_parallel_and_offload_from_settings():
    settings = Settings(_env_file=None, tensor_parallel_size=2, offload_max_resident_layers=3)
    args = build_parser(settings).parse_args(["worker"])
    assert (args.tensor_parallel_size, args.offload_max_resident_layers) == (2, 3)
    args = build_parser(Settings(_env_file=None)).parse_args(["worker", "--tensor-parallel-size", "4"])
    assert (args.tensor_parallel_size, args.offload_max_resident_layers) == (4, None)


def test_each_key_signs_its_events_with_its_own_policys_secret_or_the_every_key_entrys():
    settings = Settings(_env_file=None, api_keys=["key-a", f"sha256:{hash_key('key-b')}", "key-c"],
                        webhook_secret="service-secret", api_key_policies={
                            "key-a": {"webhook_secret": "a-secret"}, "key-c": {"read": ["s3://b/c/"]},
                            "*": {"webhook_secret": "every-key-secret"}})
    config = settings.webhook_config()
    a, b, c = map(owner_of, ("key-a", "key-b", "key-c"))
    assert config.secrets_for(a) == ["a-secret"]
    assert config.secrets_for(b) == ["every-key-secret"]  # no policy of its own: the '*' entry's, as its endpoints
    assert config.secrets_for(c) == ["service-secret"]  # its own policy names no secret
    assert config.secrets_for(None) == ["service-secret"]
