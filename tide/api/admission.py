"""What a new batch or job must pass before it is created: a model some worker serves (through the aliases), the
storage prefixes its key may reach, a public webhook URL, an idempotency key of its own, and the batch limits."""
from __future__ import annotations

from tide.api.errors import APIError
from tide.api.services import Services
from tide.jobs.models import UnservedModel, check_served, served_model
from tide.jobs.webhooks.delivery import WebhookRefused, check_url
from tide.workers.registry import live_workers


def admit_model(svc: Services, requested: str, param: str) -> str:
    """The served model `requested` runs on; 400 (at once, not after a wait) when no live worker serves it, unless
    TIDE_ACCEPT_UNSERVED lets it wait for one."""
    model = served_model(requested, svc.settings.model_aliases)
    if svc.settings.accept_unserved:
        return model
    try:
        check_served(model, requested, (w.model for w in live_workers(svc.store.redis)))
    except UnservedModel as exc:
        raise APIError(400, str(exc), param, "model_not_found") from None
    return model


def admit_input(svc: Services, owner: str, uri: str) -> None:
    if not svc.policy(owner).may_read(uri):
        raise APIError(403, f"this API key may not read {uri}: it is under none of the prefixes its policy allows "
                       "(TIDE_API_KEY_POLICIES 'read')", "input", "permission_denied")


def admit_output(svc: Services, owner: str, uri: str) -> None:
    if not svc.policy(owner).may_write(uri):
        raise APIError(403, f"this API key may not write under {uri}: it is under none of the prefixes its policy "
                       "allows (TIDE_API_KEY_POLICIES 'write')", "output", "permission_denied")


def admit_webhook(svc: Services, url: str | None) -> None:
    """A job's webhook URL is checked now as well as at each delivery: an internal address is refused up front."""
    if url is None:
        return
    try:
        check_url(url, svc.settings.webhook_allow_private)
    except WebhookRefused as exc:
        raise APIError(400, str(exc), "webhook_url", "invalid_value") from None


def scoped_idempotency_key(owner: str, header: str | None, body: object) -> str | None:
    """One idempotency key however it is sent (the `Idempotency-Key` header or the body's `idempotency_key`), scoped
    to the caller: two keys sending the same value get two jobs."""
    if body is not None and not isinstance(body, str):
        raise APIError(400, "idempotency_key must be a string", "idempotency_key", "invalid_value")
    if header and body and header != body:
        raise APIError(400, "the Idempotency-Key header and the body's idempotency_key differ; send one",
                       "idempotency_key", "invalid_value")
    key = header or body
    if key is not None and not 1 <= len(key) <= 200:
        raise APIError(400, "idempotency_key must hold 1 to 200 characters", "idempotency_key", "invalid_value")
    return None if key is None else f"{owner}:{key}"


def admit_batch_file(svc: Services, size: int) -> None:
    limit = svc.settings.batch_max_file_bytes
    if size > limit:
        raise APIError(400, f"the input file holds {size} bytes; a batch file may hold at most {limit}",
                       "input_file_id", "file_too_large")
