"""The exception tree of chatlane.

ChatlaneError
├── SessionBusy            another worker holds the session lock (not an error for drain)
├── LockLost               this worker held the lock and lost it (lease expired or stolen)
├── CommitRejected         the commit script wrote nothing; ``.reason`` says why
├── TurnNotFound           no such turn in this session (expired or never accepted)
├── AcceptRejected
│   ├── IdempotencyConflict  the key was used before with a different request
│   └── MailboxFull          too many pending turns in the session
└── ModelError
    ├── TransientModelError  worth retrying: 429, 5xx, timeout, dropped connection
    └── ModelGaveUp          retries or the turn deadline are exhausted
"""

from __future__ import annotations


class ChatlaneError(Exception):
    """Base of every error chatlane raises on purpose."""


class SessionBusy(ChatlaneError):
    """Another worker holds the session lock; it will drain the mailbox."""


class LockLost(ChatlaneError):
    """The lock this worker held expired or was taken over; it must not write."""


class CommitRejected(ChatlaneError):
    """The fenced commit refused to write (``NOT_OWNER``, ``DUPLICATE`` or ``OUT_OF_ORDER``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TurnNotFound(ChatlaneError):
    """The turn does not exist in this session."""


class AcceptRejected(ChatlaneError):
    """A turn could not be accepted; nothing was written."""


class IdempotencyConflict(AcceptRejected):
    """The ``Idempotency-Key`` was already used with a different request body."""

    def __init__(self, turn_id: str) -> None:
        super().__init__(turn_id)
        self.turn_id = turn_id


class MailboxFull(AcceptRejected):
    """The session already has the maximum number of pending turns."""


class ModelError(ChatlaneError):
    """The model call did not produce a reply."""


class TransientModelError(ModelError):
    """A failure worth retrying; ``retry_after_s`` is the server's hint, if any."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ModelGaveUp(ModelError):
    """Retries or the turn deadline ran out; the turn is committed as ``failed``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
