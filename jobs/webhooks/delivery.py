"""One delivery attempt over HTTP, and the guard that keeps webhooks off internal addresses.

2xx is success; redirects are not followed; 410 disables the endpoint; 429, 5xx, timeouts and connection errors are
worth a retry (after `Retry-After` when the receiver sends one); any other answer is final.
"""
from __future__ import annotations

import ipaddress
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import Enum
from urllib.parse import urlsplit

USER_AGENT = "tide-webhooks/1"


class WebhookRefused(ValueError):
    """A webhook URL Tide will not call (not http(s), or an internal address)."""


class Outcome(str, Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    GONE = "gone"
    FAILED = "failed"


@dataclass(frozen=True)
class AttemptResult:
    outcome: Outcome
    status_code: int | None = None
    error: str | None = None
    retry_after_s: float | None = None


def http_url(field: str, value: str | None) -> str | None:
    """A webhook URL as a spec gives it: http(s) or absent (its address is checked at delivery, by `check_url`)."""
    if value is not None and not value.startswith(("http://", "https://")):
        raise ValueError(f"{field} must be an http(s) URL, got {value!r}")
    return value


def check_url(url: str, allow_private: bool) -> None:
    """Raise `WebhookRefused` unless `url` is http(s) and every address its host resolves to is public."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookRefused(f"webhook URL {url!r} is not an http(s) URL")
    if allow_private:
        return
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise WebhookRefused(f"webhook host {parts.hostname!r} does not resolve: {exc}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if not address.is_global or address.is_multicast:
            raise WebhookRefused(f"webhook host {parts.hostname!r} resolves to the internal address {address}; "
                                 "set TIDE_WEBHOOK_ALLOW_PRIVATE=true to allow it")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # the 3xx surfaces as an HTTPError


_opener = urllib.request.build_opener(_NoRedirects)


def post(url: str, body: str, headers: dict[str, str], timeout_s: float) -> AttemptResult:
    request = urllib.request.Request(url, data=body.encode(), method="POST", headers={
        "Content-Type": "application/json", "User-Agent": USER_AGENT, **headers})
    try:
        with _opener.open(request, timeout=timeout_s) as answer:
            return AttemptResult(Outcome.DELIVERED, answer.status)
    except urllib.error.HTTPError as exc:
        return _judge(exc.code, exc.headers.get("Retry-After") if exc.headers else None)
    except (urllib.error.URLError, OSError) as exc:  # refused, reset, timed out
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        return AttemptResult(Outcome.RETRY, error=str(reason) or type(reason).__name__)


def _judge(code: int, retry_after: str | None) -> AttemptResult:
    if 200 <= code < 300:
        return AttemptResult(Outcome.DELIVERED, code)
    if code == 410:
        return AttemptResult(Outcome.GONE, code, "410 Gone: endpoint disabled for this job")
    if code == 429 or code >= 500:
        return AttemptResult(Outcome.RETRY, code, f"HTTP {code}", parse_retry_after(retry_after))
    return AttemptResult(Outcome.FAILED, code, f"HTTP {code} (not retried)")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` as seconds from now: a number of seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
