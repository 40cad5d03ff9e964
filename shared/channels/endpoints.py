"""Channel endpoints: one bot on one platform, belonging to a tenant, and where they are
kept in Redis.

The platform calls ``/v1/channels/{channel}/{endpoint id}/webhook`` with no API key, so
an endpoint is found by its id alone (one hash for every tenant), and each tenant's ids
are kept beside it for listing. Credentials are stored as given; the API never shows a
secret one again after the endpoint is made (``masked``).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import Any

from pydantic import BaseModel

from shared.channels.platform import CHANNELS, ChannelName, Platform
from shared.channels.slack import Slack
from shared.channels.telegram import Telegram
from shared.channels.twilio import Twilio
from shared.channels.whatsapp import WhatsApp
from shared.keys import GlobalKeys
from shared.recent import Recent
from shared.settings import Strategy

PLATFORMS: dict[ChannelName, Platform] = {
    "telegram": Telegram(),
    "slack": Slack(),
    "whatsapp": WhatsApp(),
    "twilio": Twilio(),
}
assert tuple(PLATFORMS) == CHANNELS
ENDPOINT_ID_PATTERN = r"^ch_[0-9a-f]{16}$"
DEFAULT_DEBOUNCE_S = 1.5
DEFAULT_FAILURE_REPLY = "Sorry, I could not answer that. Please try again."
CACHE_S = 2.0
_PLAIN = re.compile(r"[A-Za-z0-9.-]")
SESSION_PART_MAX = 30  # three parts and the prefix stay within 128


class ChannelEndpoint(BaseModel):
    """One bot on one platform, and how its messages become turns."""

    id: str
    tenant: str
    channel: ChannelName
    credentials: dict[str, str]
    api_base: str | None = None
    public_url: str | None = None
    strategy: Strategy = "coalesce"
    debounce_s: float = DEFAULT_DEBOUNCE_S
    unsupported_reply: str | None = None
    failure_reply: str | None = DEFAULT_FAILURE_REPLY
    per_second: int | None = None
    created_at: int

    @property
    def platform(self) -> Platform:
        return PLATFORMS[self.channel]

    @property
    def webhook_path(self) -> str:
        return f"/v1/channels/{self.channel}/{self.id}/webhook"

    def masked(self) -> dict[str, str]:
        """The credentials as the API shows them: secret ones by their last four
        characters only (a short one not at all)."""
        public = self.platform.public
        return {
            name: value if name in public else "…" + (value[-4:] if len(value) >= 16 else "")
            for name, value in self.credentials.items()
        }

    def session_for(self, chat: str, thread: str | None = None, via: str | None = None) -> str:
        """The session of one chat (and thread, and own number) of this bot: the same
        chat always maps to the same session, and no two chats share one."""
        parts = [self.channel, self.id, _part(chat)]
        if thread:
            parts.append("t" + _part(thread))
        if via:
            parts.append("v" + _part(via))
        return ":".join(parts)


def new_endpoint_id() -> str:
    return f"ch_{secrets.token_hex(8)}"


def new_token() -> str:
    """A secret to hand a platform (Telegram's ``secret_token``: 1–256 of A-Za-z0-9_-)."""
    return secrets.token_urlsafe(32)


def _part(value: str) -> str:
    """A chat id as session-id characters, reversibly: A-Za-z0-9.- are kept, every
    other byte is ``_`` and two hex digits; a long one becomes ``_h`` and a SHA-256
    prefix (which no escaped id can spell)."""
    plain = "".join(c if _PLAIN.fullmatch(c) else _escape(c) for c in value)
    if len(plain) <= SESSION_PART_MAX:
        return plain
    return "_h" + hashlib.sha256(value.encode()).hexdigest()[:24]  # no escape reads "_h"


def _escape(char: str) -> str:
    return "".join(f"_{b:02x}" for b in char.encode())


class Directory:
    """Every tenant's channel endpoints; asyncio, one per process, on a client the caller
    owns. Lookups by id (the webhook's hot path) are cached ``CACHE_S``."""

    def __init__(self, client: Any, keys: GlobalKeys) -> None:
        self._client = client
        self._keys = keys
        self._cache: Recent[ChannelEndpoint] = Recent(CACHE_S)

    async def find(self, endpoint_id: str, *, fresh: bool = False) -> ChannelEndpoint | None:
        cached = None if fresh else self._cache.get(endpoint_id)
        if cached is not None:
            return cached
        raw = await self._client.hget(self._keys.channels, endpoint_id)
        if raw is None:
            return None
        found = ChannelEndpoint.model_validate_json(raw)
        self._cache.put(endpoint_id, found)
        return found

    async def of_tenant(self, tenant: str) -> list[ChannelEndpoint]:
        ids = sorted(await self._client.smembers(self._keys.channel_ids(tenant)))
        raws = await self._client.hmget(self._keys.channels, ids) if ids else []
        found = [ChannelEndpoint.model_validate_json(r) for r in raws if r]
        return sorted((e for e in found if e.tenant == tenant), key=lambda e: e.created_at)

    async def save(self, endpoint: ChannelEndpoint) -> None:
        pipe = self._client.pipeline(transaction=True)
        pipe.hset(self._keys.channels, endpoint.id, endpoint.model_dump_json())
        pipe.sadd(self._keys.channel_ids(endpoint.tenant), endpoint.id)
        await pipe.execute()
        self._cache.drop(endpoint.id)

    async def remove(self, tenant: str, endpoint_id: str) -> bool:
        found = await self.find(endpoint_id, fresh=True)
        if found is None or found.tenant != tenant:
            return False
        pipe = self._client.pipeline(transaction=True)
        pipe.hdel(self._keys.channels, endpoint_id)
        pipe.srem(self._keys.channel_ids(tenant), endpoint_id)
        await pipe.execute()
        self._cache.drop(endpoint_id)
        return True
