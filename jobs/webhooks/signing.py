"""Standard Webhooks signatures: `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64> ...`.

A `whsec_<base64>` secret is decoded as the scheme says; any other string is used as its UTF-8 bytes. Several
secrets (space-separated in TIDE_WEBHOOK_SECRET) each add a signature, so receivers can rotate keys.
"""
from __future__ import annotations

from datetime import datetime, timezone

from standardwebhooks import Webhook


def split_secrets(value: str | None) -> list[str]:
    """'whsec_a whsec_b' -> ['whsec_a', 'whsec_b']; None or blank -> []."""
    return (value or "").split()


def signer(secret: str) -> Webhook:
    """The `standardwebhooks` signer (and verifier) of one secret."""
    try:
        return Webhook(secret if secret.startswith("whsec_") else secret.encode())
    except Exception as exc:  # the package raises plain binascii/RuntimeError errors on bad keys
        raise ValueError(f"webhook secret is not usable ({type(exc).__name__}); use whsec_<base64> or plain text") \
            from None


def sign_headers(secrets: list[str], webhook_id: str, timestamp: float, body: str) -> dict[str, str]:
    """The headers of one attempt; without secrets, the id and timestamp only (unsigned)."""
    headers = {"webhook-id": webhook_id, "webhook-timestamp": str(int(timestamp))}
    when = datetime.fromtimestamp(int(timestamp), timezone.utc)
    signatures = [signer(secret).sign(webhook_id, when, body) for secret in secrets]
    if signatures:
        headers["webhook-signature"] = " ".join(signatures)
    return headers
