"""One filter for secrets: URL passwords (a Redis URL's), the secret values a process holds and the service's storage
prefix are masked in messages, in every log record whichever handler writes it, and in the CLI's one-line errors."""
from __future__ import annotations

import logging

from tide.cli import main
from tide.jobs.redaction import Redactor

REDIS = "redis://:hunter2-pass@10.0.0.5:6379/0"


def test_url_passwords_secrets_and_the_storage_prefix_are_masked():
    redact = Redactor(secrets=["whsec_abcdefgh", "key"], private_prefixes=["s3://svc-bucket/tide/"])
    text = (f"cannot reach Redis at {REDIS}; https://user:pw0rd@hooks.example.org/x signed with whsec_abcdefgh; "
            "no object s3://svc-bucket/tide/files/file-1; your key s3://team/key.jsonl")
    assert redact(text) == ("cannot reach Redis at redis://:***@10.0.0.5:6379/0; https://user:***@hooks.example.org/x"
                            " signed with ***; no object <storage>/files/file-1; your key s3://team/key.jsonl")


def test_every_log_record_passes_the_filter(caplog):
    before = logging.getLogRecordFactory()
    Redactor(secrets=["sk-tenant-secret"]).install()
    Redactor(secrets=["sk-tenant-secret"]).install()  # installed twice: still one filter
    try:
        with caplog.at_level(logging.INFO):
            logging.getLogger("tide.test").error("store %s down, key %s", REDIS, "sk-tenant-secret")
            try:
                raise RuntimeError(f"connect {REDIS}")
            except RuntimeError:
                logging.getLogger("tide.test").exception("failed")
    finally:
        logging.setLogRecordFactory(before)
    text = caplog.text + "".join(r.exc_text or "" for r in caplog.records)
    assert "hunter2-pass" not in text and "sk-tenant-secret" not in text
    assert "redis://:***@10.0.0.5" in caplog.records[0].getMessage()


def test_the_cli_error_line_hides_the_redis_password(monkeypatch, capsys):
    from tide.settings import get_settings

    monkeypatch.setenv("TIDE_REDIS_URL", "redis://:hunter2-pass@127.0.0.1:1/0")
    get_settings.cache_clear()
    before = logging.getLogRecordFactory()
    try:
        assert main(["status", "job_x"]) == 2
    finally:
        get_settings.cache_clear()
        logging.setLogRecordFactory(before)
    err = capsys.readouterr().err
    assert "cannot reach Redis" in err and "hunter2-pass" not in err and ":***@127.0.0.1:1" in err
