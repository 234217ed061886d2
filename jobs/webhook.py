"""Signed completion webhooks: POST the job as JSON, signed with HMAC-SHA256, retried with exponential backoff.

Header `Tide-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`. Signing the timestamp with the
body lets a receiver reject replays of an old delivery (see `verify_signature`).
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable

logger = logging.getLogger("tide.webhook")

SIGNATURE_HEADER = "Tide-Signature"
SECRET_ENV = "TIDE_WEBHOOK_SECRET"


def sign(secret: str, body: bytes, timestamp: int) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_signature(secret: str, header: str, body: bytes, now: float, tolerance_s: float = 300) -> bool:
    """True when `header` signs `body` with `secret` and its timestamp is within `tolerance_s` of `now`."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, body, timestamp), f"t={timestamp},v1={fields.get('v1', '')}")


def deliver(url: str, body: bytes, secret: str | None, attempts: int = 5, backoff_s: float = 0.5,
            timeout_s: float = 10, sleep: Callable[[float], None] = time.sleep,
            clock: Callable[[], float] = time.time) -> bool:
    """POST `body` until a 2xx answer; retry connection errors, 429 and 5xx with doubling waits. True if delivered."""
    for attempt in range(1, attempts + 1):
        headers = {"Content-Type": "application/json", "User-Agent": "tide-webhook"}
        if secret:
            headers[SIGNATURE_HEADER] = sign(secret, body, int(clock()))
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s):
                return True
        except urllib.error.HTTPError as exc:
            if exc.code != 429 and exc.code < 500:
                logger.error("webhook %s refused the delivery with HTTP %d; not retrying", url, exc.code)
                return False
            reason = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            reason = str(exc)
        logger.warning("webhook %s attempt %d/%d failed: %s", url, attempt, attempts, reason)
        if attempt < attempts:
            sleep(backoff_s * 2 ** (attempt - 1))
    return False
