"""The one key schema. Only this module formats a Redis key.

Every key of a session carries the hash tag ``{<tenant>:<session>}``, so each Lua
script touches a single Redis Cluster slot. Keys outside any session (the index of
active sessions, the sweeper's lock) are touched only by single-key commands.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SESSION_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
TENANT_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
_SESSION_ID = re.compile(SESSION_ID_PATTERN)
_TENANT_ID = re.compile(TENANT_ID_PATTERN)


def is_valid_session_id(value: str) -> bool:
    return bool(_SESSION_ID.fullmatch(value))


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
        """Hash: ``next_seq`` (last handed out), ``done_seq`` (last committed), ``renudges``."""
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
    def turn_prefix(self) -> str:
        """Prefix of turn records; scripts append a turn id (same hash tag, same slot)."""
        return f"{self.tag}:turn:"

    def turn(self, turn_id: str) -> str:
        """Hash: the turn record (status, input, output, error, timestamps)."""
        return f"{self.turn_prefix}{turn_id}"

    @property
    def events_prefix(self) -> str:
        return f"{self.tag}:events:"

    def events(self, turn_id: str) -> str:
        """Stream: the turn's events (status changes, token deltas, the final event)."""
        return f"{self.events_prefix}{turn_id}"

    @property
    def nudged(self) -> str:
        """String present while a sweeper re-nudge of this session is outstanding."""
        return f"{self.tag}:nudged"

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
    def sweeper_lock(self) -> str:
        return f"{self.prefix}:sweeper"


def parse_member(member: str) -> tuple[str, str]:
    """Split an active-index member back into ``(tenant, session)``; tenants hold no colon."""
    tenant, _, session = member.partition(":")
    return tenant, session
