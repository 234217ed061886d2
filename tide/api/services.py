"""What every route needs, built once per API process: settings, Redis-backed stores, the dispatcher, storage."""
from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from tide.api.errors import APIError
from tide.jobs.catalog.store import Catalog
from tide.jobs.storage import Location, StorageConfig, resolve
from tide.jobs.store import RedisJobStore
from tide.settings import Settings, hash_key

OWNER_CHARS = 16  # an owner is named by the first hex digits of its key's hash, never by the key


@dataclass
class Services:
    settings: Settings
    store: RedisJobStore
    dispatcher: object  # workers.dispatch.CeleryDispatcher
    catalog: Catalog
    storage_config: StorageConfig  # every path or URI this process resolves goes through it
    storage: Location  # the service's own files and default results
    key_hashes: frozenset[str]

    @classmethod
    def from_settings(cls, settings: Settings) -> "Services":
        from tide.wiring import connect

        store, dispatcher = connect(settings.redis_url)
        config = settings.storage_config()
        return cls(settings=settings, store=store, dispatcher=dispatcher, catalog=Catalog(store.redis),
                   storage_config=config, storage=resolve(settings.storage.rstrip("/"), config),
                   key_hashes=settings.key_hashes())


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
