"""What each API key may do beyond its own files, batches and jobs (`TIDE_API_KEY_POLICIES`): the `s3://` prefixes
its jobs may read and write, the endpoints that get its batch events and the secret that signs them, and the eval
suites its dashboard shows. A key without a policy of its own takes the `*` entry, else none of these.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, field_validator

HASH_PREFIX = "sha256:"
EVERY_KEY = "*"
OWNER_CHARS = 16  # an owner is named by the first hex digits of its key's hash, never by the key


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def owner_of(key: str) -> str:
    """The owner name of a configured key (plain, or sha256:<hex> of it): what the API records and logs."""
    digest = key[len(HASH_PREFIX):].lower() if key.startswith(HASH_PREFIX) else hash_key(key)
    return digest[:OWNER_CHARS]


class KeyPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    read: list[str] = Field(default_factory=list, description="s3:// prefixes /v1/jobs may read input from")
    write: list[str] = Field(default_factory=list, description="s3:// prefixes /v1/jobs may write results under")
    webhooks: list[str] = Field(default_factory=list, description="endpoints that get this key's batch events "
                                "(batch.completed, .failed, .expired, .cancelled) in OpenAI's shape")
    webhook_secret: str | None = Field(None, repr=False, description="signs this key's events (whsec_... or plain; "
                                       "space-separated to rotate) instead of TIDE_WEBHOOK_SECRET")
    evals: list[str] = Field(default_factory=list, description="eval suites the key's dashboard shows ('*': all)")

    @field_validator("read", "write")
    @classmethod
    def _s3_prefixes(cls, value: list[str]) -> list[str]:
        for prefix in value:
            if not prefix.startswith("s3://") or len(prefix) <= len("s3://"):
                raise ValueError(f"{prefix!r} is not an s3://bucket[/prefix]")
        return value

    @field_validator("webhooks")
    @classmethod
    def _http(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"webhook endpoint {url!r} is not an http(s) URL")
        return value

    def may_read(self, uri: str) -> bool:
        return any(under(uri, prefix) for prefix in self.read)

    def may_write(self, uri: str) -> bool:
        return any(under(uri, prefix) for prefix in self.write)

    def sees_suite(self, name: str) -> bool:
        return EVERY_KEY in self.evals or name in self.evals


def under(uri: str, prefix: str) -> bool:
    """Whether `uri` lies under `prefix` on a path boundary (`s3://b/team` covers `s3://b/team/x`, not
    `s3://b/team-b/x`); a URI with `.` or `..` segments lies under nothing, whatever a store makes of them."""
    segments = uri.removeprefix("s3://").split("/")
    if any(s in (".", "..") for s in segments[1:]):
        return False
    base = prefix.rstrip("/")
    return uri == base or uri.startswith(base + "/") or (prefix.endswith("/") and uri.startswith(prefix))


def policies_by_owner(policies: Mapping[str, KeyPolicy]) -> dict[str, KeyPolicy]:
    """{owner name or '*': policy} from the setting's {key, sha256:<hex> or '*': policy}."""
    return {key if key == EVERY_KEY else owner_of(key): policy for key, policy in policies.items()}


def policy_for(owner: str, by_owner: Mapping[str, KeyPolicy]) -> KeyPolicy:
    return by_owner.get(owner) or by_owner.get(EVERY_KEY) or KeyPolicy()
