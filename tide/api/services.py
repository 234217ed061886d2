"""What every route needs, built once per API process: settings, Redis-backed stores, the dispatcher, storage."""
from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from tide.api.errors import APIError
from tide.jobs.catalog.store import Catalog
from tide.jobs.lifecycle import Finalizer
from tide.jobs.redaction import Redactor
from tide.jobs.storage import Location, StorageConfig, resolve
from tide.jobs.store import RedisJobStore
from tide.key_policies import OWNER_CHARS, KeyPolicy, hash_key, policy_for
from tide.settings import Settings


@dataclass
class Services:
    settings: Settings
    store: RedisJobStore
    dispatcher: object  # workers.dispatch.CeleryDispatcher
    catalog: Catalog
    storage_config: StorageConfig  # every path or URI this process resolves goes through it
    storage: Location  # the service's own files and default results
    key_hashes: frozenset[str]
    finalizer: Finalizer  # ends a batch cancelled before any worker planned it
    redact: Redactor  # every error message answered passes it

    @classmethod
    def from_settings(cls, settings: Settings) -> "Services":
        from tide.wiring import connect

        store, dispatcher = connect(settings.redis_url)
        config = settings.storage_config()
        storage = resolve(settings.storage.rstrip("/"), config)
        return cls(settings=settings, store=store, dispatcher=dispatcher, catalog=Catalog(store.redis),
                   storage_config=config, storage=storage, key_hashes=settings.key_hashes(),
                   finalizer=Finalizer(store=store, storage=config,
                                       price_per_worker_hour=settings.price_per_worker_hour),
                   redact=settings.redactor(private_prefixes=(storage.uri,)))

    def policy(self, owner: str) -> KeyPolicy:
        """What the key named `owner` may reach (read each call: tests and reloads swap `settings`)."""
        return policy_for(owner, self.settings.key_policies())


def services(request: Request) -> Services:
    return request.app.state.services


def owner(request: Request) -> str:
    """The caller, from `Authorization: Bearer <key>`; refuses a missing or unknown key with 401."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise APIError(401, "You didn't provide an API key: send it as 'Authorization: Bearer <key>'.",
                       code="missing_api_key")
    digest = hash_key(token.strip())
    if digest not in services(request).key_hashes:
        raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
    return digest[:OWNER_CHARS]
