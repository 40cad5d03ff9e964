"""API keys: which tenant a presented key acts for. Kept in Redis as digests only.

A key reads ``clk_<id>_<secret>``: the id (12 hex digits) finds its record with one
``HGET``; the SHA-256 of the whole key is compared with the stored digest in constant
time. The plain key is shown once, when it is made, and never stored. Revoking marks the
record, so every API replica refuses the key from its next request on (nothing is
cached), and a deployment that once had keys never falls back to anonymous access.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel

from shared.keys import GlobalKeys
from shared.redis import async_client
from shared.store.records import now_ms

T = TypeVar("T")
KEY_PREFIX = "clk_"
_KEY = re.compile(r"^clk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


class ApiKey(BaseModel):
    """What is kept of a key: never the key itself."""

    id: str
    tenant: str
    name: str = ""
    digest: str
    created_at: int
    revoked_at: int | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


def key_id(value: str) -> str:
    """The id of a key given as its id or as the whole key."""
    match = _KEY.fullmatch(value)
    return match.group(1) if match else value


def digest(presented: str) -> str:
    return hashlib.sha256(presented.encode()).hexdigest()


class KeyRing:
    """The deployment's API keys (one Redis hash, ``GlobalKeys.api_keys``)."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.key = GlobalKeys(prefix).api_keys
        self._configured = False
        self._none_seen_at = -1e9

    async def create(self, tenant: str, name: str = "") -> tuple[ApiKey, str]:
        """A new key for ``tenant``: its record and the plain key (shown once)."""
        key_id = secrets.token_hex(6)
        plain = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        record = ApiKey(
            id=key_id, tenant=tenant, name=name, digest=digest(plain), created_at=now_ms()
        )
        await self.client.hset(self.key, key_id, record.model_dump_json())
        return record, plain

    async def all(self) -> list[ApiKey]:
        """Every key ever made (revoked ones too), oldest first."""
        raw = await self.client.hvals(self.key)
        keys = [ApiKey.model_validate_json(value) for value in raw]
        return sorted(keys, key=lambda k: (k.created_at, k.id))

    async def revoke(self, key: str) -> ApiKey | None:
        """Mark the key (its id, or the whole key) revoked, idempotently; None when no such
        key exists."""
        raw = await self.client.hget(self.key, key_id(key))
        if raw is None:
            return None
        record = ApiKey.model_validate_json(raw)
        if not record.revoked:
            record = record.model_copy(update={"revoked_at": now_ms()})
            await self.client.hset(self.key, record.id, record.model_dump_json())
        return record

    async def configured(self, max_age_s: float = 0.0) -> bool:
        """Whether any key was ever made here (revoked keys count: no fallback to open).

        Once true it stays true (keys are never deleted), so it is asked once; "none yet"
        is trusted for ``max_age_s`` (a request path asks with 1 s: for that long after
        the first key is made, a loopback client may still be served anonymously)."""
        if self._configured:
            return True
        if time.monotonic() - self._none_seen_at < max_age_s:
            return False
        self._configured = bool(await self.client.hlen(self.key))
        if not self._configured:
            self._none_seen_at = time.monotonic()
        return self._configured

    async def tenant_of(self, presented: str) -> str | None:
        """The tenant a presented key acts for; None for a malformed, unknown or revoked key."""
        if _KEY.fullmatch(presented) is None:
            return None
        raw = await self.client.hget(self.key, key_id(presented))
        if raw is None:
            return None
        record = ApiKey.model_validate_json(raw)
        if not hmac.compare_digest(record.digest, digest(presented)) or record.revoked:
            return None
        return record.tenant


def with_ring(url: str, prefix: str, action: Callable[[KeyRing], Awaitable[T]]) -> T:
    """Run ``action`` on the key ring of the Redis at ``url``, on a client of its own, from
    code that has no event loop (commands, tools, tests)."""

    async def run() -> T:
        client = async_client(url, name="chatlane-keys")
        try:
            return await action(KeyRing(client, prefix))
        finally:
            await client.aclose()

    return asyncio.run(run())
