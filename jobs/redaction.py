"""The one filter secrets never get past: error messages the API answers and every log line a process writes.

It masks passwords in URLs (`redis://:pw@host`, `https://user:pw@host`), each secret value the process was given (API
keys, webhook secrets, the AWS secret key) and the service's own storage prefix, which callers have no use for.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Iterable

MASK = "***"
STORAGE_MARK = "<storage>"
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/:@]*):[^\s/@]+@")
_SHORTEST_SECRET = 6  # shorter values would mask ordinary words


class Redactor:
    def __init__(self, secrets: Iterable[str] = (), private_prefixes: Iterable[str] = ()) -> None:
        # Longest first, so a secret that contains another is masked whole.
        self._secrets = sorted({s for s in secrets if len(s) >= _SHORTEST_SECRET}, key=len, reverse=True)
        self._prefixes = sorted({p.rstrip("/") for p in private_prefixes if p}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        text = _URL_PASSWORD.sub(rf"\g<head>:{MASK}@", text)
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        for prefix in self._prefixes:
            text = text.replace(prefix, STORAGE_MARK)
        return text

    def install(self) -> None:
        """Redact every log record this process makes, whichever handler (Celery's, uvicorn's) writes it."""
        make = logging.getLogRecordFactory()
        if getattr(make, "redactor", None) is not None:
            make = make.inner  # installed again (a test, a second command): replace, do not stack

        def record(*args, **kwargs) -> logging.LogRecord:
            item = make(*args, **kwargs)
            try:
                item.msg, item.args = self(item.getMessage()), None
            except Exception:  # a malformed call: logging reports it when the record is written
                return item
            if item.exc_info and not item.exc_text:
                item.exc_text = self(logging.Formatter().formatException(item.exc_info))
            return item

        record.redactor, record.inner = self, make
        logging.setLogRecordFactory(record)
