"""The exception tree of chatlane.

ChatlaneError
├── ConfigurationError     chatlane must not run like this; the message says what to change
├── SessionBusy            another worker holds the session lock (not an error for a drain)
├── LockLost               this worker held the lock and lost it (lease expired or taken)
├── TurnStopped            the running attempt was made void (a cancel, a double text)
├── CommitRejected         the commit script wrote nothing; ``.reason`` says why
├── NotFound
│   ├── SessionNotFound    no such session (never used, or expired)
│   └── TurnNotFound       no such turn in this session
├── AcceptRejected         nothing was written
│   ├── IdempotencyConflict  the key was used before with a different request
│   ├── MailboxFull          too many pending turns in the session
│   ├── SessionActive        a ``reject`` double text while a turn is queued or running
│   └── HistoryFull          the session's history is at its size limit
├── RateLimited            the tenant spent its budget for now; ``.retry_after_s``
├── NotAuthenticated       no valid API key (or anonymous access is not allowed here)
├── TooManyWaiters         this process already holds as many waiting clients as allowed
└── ModelError
    ├── ModelUnavailable     the model could not be built (missing setting, bad import path)
    ├── ModelRejected        the model refused the request (a 4xx): retrying cannot help
    ├── TransientModelError  worth retrying: 429, 5xx, timeout, dropped connection
    └── ModelGaveUp          retries or the turn deadline are exhausted
"""

from __future__ import annotations


class ChatlaneError(Exception):
    """Base of every error chatlane raises on purpose."""


class ConfigurationError(ChatlaneError):
    """A setting or the server chatlane runs against is unsafe or unusable."""


class SessionBusy(ChatlaneError):
    """Another worker holds the session lock; it will drain the mailbox."""


class LockLost(ChatlaneError):
    """The lock this worker held expired or was taken over; it must not write."""


class TurnStopped(ChatlaneError):
    """The attempt this worker runs was made void (its turn was cancelled, or a message
    joined its coalesced group): stop the model call, write nothing, begin again."""


class CommitRejected(ChatlaneError):
    """The fenced commit refused to write (``NOT_OWNER``, ``STOPPED``, ``DUPLICATE`` or
    ``OUT_OF_ORDER``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotFound(ChatlaneError):
    """The thing asked for does not exist (or no longer does)."""


class SessionNotFound(NotFound):
    """The session has no turns: it was never used, or it expired."""


class TurnNotFound(NotFound):
    """The turn does not exist in this session."""


class AcceptRejected(ChatlaneError):
    """A turn could not be accepted; nothing was written."""


class IdempotencyConflict(AcceptRejected):
    """The ``Idempotency-Key`` was already used with a different request body."""

    def __init__(self, turn_id: str) -> None:
        super().__init__(turn_id)
        self.turn_id = turn_id


class HistoryFull(AcceptRejected):
    """The session's history holds as many messages as it may; clear it to go on."""


class RateLimited(ChatlaneError):
    """The tenant's requests or tokens per minute are spent; retry after ``retry_after_s``."""

    def __init__(self, what: str, limit: int, retry_after_s: int) -> None:
        super().__init__(f"{what}: the limit is {limit} per minute")
        self.what = what
        self.limit = limit
        self.retry_after_s = retry_after_s


class NotAuthenticated(ChatlaneError):
    """The request carries no valid API key, and anonymous access is not allowed to it."""


class MailboxFull(AcceptRejected):
    """The session already has the maximum number of pending turns."""


class SessionActive(AcceptRejected):
    """The message's strategy is ``reject`` and the session has a queued or running turn
    (``turn_id``)."""

    def __init__(self, turn_id: str) -> None:
        super().__init__(turn_id)
        self.turn_id = turn_id


class TooManyWaiters(ChatlaneError):
    """This process already holds its cap of clients waiting for events."""


class ModelError(ChatlaneError):
    """The model call did not produce a reply."""


class ModelUnavailable(ModelError):
    """The model could not be built; ``str()`` names the setting to fix."""


class ModelRejected(ModelError):
    """The model server refused the request (a 4xx other than 408/409/429)."""


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
