"""One delivery attempt over HTTP, and the guard that keeps webhooks off internal addresses.

The host is resolved once: the guard checks the addresses, and the attempt connects to the checked address (the
URL's host still names it for TLS and `Host`), so a DNS answer that changes in between (rebinding) cannot steer the
request inside. 2xx is success; redirects are not followed; 410 disables the endpoint; 429, 5xx, timeouts and
connection errors are worth a retry (after `Retry-After` when the receiver sends one); any other answer is final.
"""
from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
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


def check_url(url: str, allow_private: bool) -> str:
    """The address to connect to for `url`: raise `WebhookRefused` unless `url` is http(s) and (unless
    `allow_private`) every address its host resolves to is public."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookRefused(f"webhook URL {url!r} is not an http(s) URL")
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise WebhookRefused(f"webhook host {parts.hostname!r} does not resolve: {exc}") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    for address in addresses if not allow_private else ():
        if not address.is_global or address.is_multicast:
            raise WebhookRefused(f"webhook host {parts.hostname!r} resolves to the internal address {address}; "
                                 "set TIDE_WEBHOOK_ALLOW_PRIVATE=true to allow it")
    return str(addresses[0])


def _dial(address: str):
    """A connection opener that reaches `address` whatever the host name resolves to now."""
    def create_connection(host_port, timeout=None, source_address=None):
        return socket.create_connection((address, host_port[1]), timeout, source_address)
    return create_connection


def _connection(url: str, address: str, timeout_s: float) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    if parts.scheme == "https":
        connection = http.client.HTTPSConnection(parts.hostname, parts.port or 443, timeout=timeout_s,
                                                 context=ssl.create_default_context())
    else:
        connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout_s)
    connection._create_connection = _dial(address)  # TLS still verifies the certificate against the host name
    return connection


def post(url: str, body: str, headers: dict[str, str], timeout_s: float, address: str) -> AttemptResult:
    """POST `body` to `url` at the checked `address`."""
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    connection = _connection(url, address, timeout_s)
    try:
        connection.request("POST", target, body=body.encode(), headers={
            "Content-Type": "application/json", "User-Agent": USER_AGENT, **headers})
        answer = connection.getresponse()
        answer.read()
        return _judge(answer.status, answer.getheader("Retry-After"))
    except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out, a broken answer
        return AttemptResult(Outcome.RETRY, error=str(exc) or type(exc).__name__)
    finally:
        connection.close()


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
