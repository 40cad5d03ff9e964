"""The one key schema. Only this module formats a Redis key (or a pub/sub channel name).

Every key of a session carries the hash tag ``{<tenant>:<session>}``, so each Lua
script touches a single Redis Cluster slot, and every key a script touches is passed in
KEYS. Keys outside any session (the index of active sessions, the sweeper's election)
are touched only by single-key commands.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# 1–128 characters of A-Za-z0-9._:- and not only dots ("." and ".." are path segments
# that clients remove); the length is checked beside the pattern (no lookahead in it).
SESSION_ID_PATTERN = r"^[A-Za-z0-9._:-]*[A-Za-z0-9_:-][A-Za-z0-9._:-]*$"
SESSION_ID_MAX = 128
TENANT_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
TURN_ID_PATTERN = r"^turn_[0-9a-f]{24}$"
_SESSION_ID = re.compile(SESSION_ID_PATTERN)
_TENANT_ID = re.compile(TENANT_ID_PATTERN)


def is_valid_session_id(value: str) -> bool:
    return len(value) <= SESSION_ID_MAX and bool(_SESSION_ID.fullmatch(value))


def is_valid_tenant_id(value: str) -> bool:
    return bool(_TENANT_ID.fullmatch(value))


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """All keys of one session; built once per operation, cheap to construct."""

    prefix: str
    tenant: str
    session: str

    @property
    def tag(self) -> str:
        return f"{self.prefix}:{{{self.tenant}:{self.session}}}"

    @property
    def member(self) -> str:
        """This session's entry in the active-session index."""
        return f"{self.tenant}:{self.session}"

    @property
    def meta(self) -> str:
        """Hash: ``next_seq`` (last handed out), ``done_seq`` (last committed),
        ``finished`` (turns that reached a terminal status), ``created_at`` /
        ``updated_at`` (ms), ``rewakes`` (the sweeper's backoff), ``stops`` (the stop
        generation: bumped whenever a running attempt is made void), ``strategy`` /
        ``debounce_ms`` (the session's double-texting defaults)."""
        return f"{self.tag}:meta"

    @property
    def mailbox(self) -> str:
        """List of pending turn ids in sequence order (head = next to run)."""
        return f"{self.tag}:mailbox"

    @property
    def history(self) -> str:
        """List of ``message_to_dict`` JSON documents, oldest first."""
        return f"{self.tag}:history"

    @property
    def lock(self) -> str:
        """String: the random token of the worker that drains this session."""
        return f"{self.tag}:lock"

    @property
    def turns(self) -> str:
        """Hash: turn id -> the turn record as JSON (``shared.store.records.Turn``)."""
        return f"{self.tag}:turns"

    @property
    def turn_index(self) -> str:
        """Sorted set: turn ids scored by their sequence number (for listing)."""
        return f"{self.tag}:turn_index"

    @property
    def events(self) -> str:
        """Stream: every event of the session's turns (status, delta, final), in order."""
        return f"{self.tag}:events"

    @property
    def channel(self) -> str:
        """Pub/sub channel announcing each event appended to ``events`` (not a key)."""
        return f"{self.tag}:notify"

    @property
    def outbox(self) -> str:
        """List: webhook messages the commit script wrote, waiting to become deliveries."""
        return f"{self.tag}:outbox"

    @property
    def replies(self) -> str:
        """List: replies waiting to go back to this session's messaging chat, in order
        (``shared.channels.lane.Reply`` as JSON; the head is sent next)."""
        return f"{self.tag}:replies"

    @property
    def reply_pace(self) -> str:
        """String present while this chat may not be sent its next reply (the platform's
        pace per chat: it expires when the next one may go)."""
        return f"{self.tag}:replies:pace"

    def seen(self, message: str) -> str:
        """String present once a platform message that became no turn was answered."""
        return f"{self.tag}:seen:{message}"

    @property
    def woken(self) -> str:
        """String present while a wake-up sent by the sweeper is outstanding."""
        return f"{self.tag}:woken"

    def idempotency(self, key: str) -> str:
        """String: the turn id an ``Idempotency-Key`` produced, with the request fingerprint."""
        return f"{self.tag}:idem:{key}"


@dataclass(frozen=True, slots=True)
class GlobalKeys:
    prefix: str

    @property
    def active(self) -> str:
        """Sorted set: ``tenant:session`` members scored by last acceptance (ms)."""
        return f"{self.prefix}:active"

    @property
    def control(self) -> str:
        """Pub/sub channel (not a key) telling workers that a running attempt was stopped:
        ``<tenant>:<session> <stop generation>``."""
        return f"{self.prefix}:control"

    @property
    def tenant_defaults(self) -> str:
        """Hash: tenant -> its defaults for new turns (double texting) as JSON."""
        return f"{self.prefix}:tenants"

    @property
    def sweeper(self) -> str:
        """String: held by the worker elected to sweep for the current interval."""
        return f"{self.prefix}:sweeper"

    @property
    def outbox_index(self) -> str:
        """Sorted set: ``tenant:session`` members whose outbox may hold messages, scored
        by when a sender may next look (a claim moves the score into the future)."""
        return f"{self.prefix}:outbox"

    @property
    def deliveries(self) -> str:
        """Hash: delivery id -> the delivery (target, payload, attempts) as JSON."""
        return f"{self.prefix}:deliveries"

    @property
    def deliveries_due(self) -> str:
        """Sorted set: delivery ids scored by when they are next due (ms)."""
        return f"{self.prefix}:deliveries:due"

    @property
    def api_keys(self) -> str:
        """Hash: API key id -> its record (tenant, SHA-256 digest, revoked_at) as JSON."""
        return f"{self.prefix}:apikeys"

    @property
    def rate_limits(self) -> str:
        """Prefix of the per-tenant rate-limit counters (the ``limits`` library's keys)."""
        return f"{self.prefix}:limits"

    @property
    def channels(self) -> str:
        """Hash: channel endpoint id -> the endpoint (tenant, platform, credentials) as JSON."""
        return f"{self.prefix}:channels"

    def channel_ids(self, tenant: str) -> str:
        """Set: the ids of a tenant's channel endpoints."""
        return f"{self.prefix}:channels:tenant:{tenant}"

    @property
    def replies_due(self) -> str:
        """Sorted set: ``tenant:session`` members whose reply lane may hold replies, scored
        by when the next one may be sent (ms; a claim moves the score into the future)."""
        return f"{self.prefix}:replies:due"

    def channel_paused(self, endpoint_id: str) -> str:
        """String present while a platform asked a bot to wait (a 429's ``retry_after``)."""
        return f"{self.prefix}:channels:paused:{endpoint_id}"

    def reply_dead_letters(self, tenant: str) -> str:
        """Hash: a tenant's replies that could not be sent (id -> JSON)."""
        return f"{self.prefix}:replies:dead:{tenant}"

    def reply_dead_index(self, tenant: str) -> str:
        """Sorted set: a tenant's dead reply ids scored by when they died (ms)."""
        return f"{self.prefix}:replies:dead:{tenant}:index"

    def turn_dead_letters(self, tenant: str) -> str:
        """Hash: a tenant's poison turns, failed because workers died on them (id -> JSON)."""
        return f"{self.prefix}:turns:dead:{tenant}"

    def turn_dead_index(self, tenant: str) -> str:
        """Sorted set: a tenant's poison turn ids scored by when they failed (ms)."""
        return f"{self.prefix}:turns:dead:{tenant}:index"

    def endpoints(self, tenant: str) -> str:
        """Hash: a tenant's webhook endpoints (id -> JSON) and its signing secrets."""
        return f"{self.prefix}:webhooks:{tenant}"

    def dead_letters(self, tenant: str) -> str:
        """Hash: a tenant's dead deliveries (id -> JSON)."""
        return f"{self.prefix}:dead:{tenant}"

    def dead_index(self, tenant: str) -> str:
        """Sorted set: a tenant's dead delivery ids scored by when they died (ms)."""
        return f"{self.prefix}:dead:{tenant}:index"


def parse_member(member: str) -> tuple[str, str]:
    """Split an active-index member back into ``(tenant, session)``; tenants hold no colon."""
    tenant, _, session = member.partition(":")
    return tenant, session
