"""Webhook signatures as the Standard Webhooks spec defines them.

Each delivery carries ``webhook-id`` (the message: the same on every attempt and replay,
so receivers can drop duplicates), ``webhook-timestamp`` (Unix seconds of this attempt)
and ``webhook-signature``: ``v1,<base64 HMAC-SHA256>`` over ``id.timestamp.body``, one
per secret still valid, space-separated, so a receiver keeps working while a secret is
rotated. Secrets are ``whsec_`` followed by base64 of the key bytes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Sequence

SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def is_secret(value: str) -> bool:
    if not value.startswith(SECRET_PREFIX):
        return False
    try:
        return len(base64.b64decode(value[len(SECRET_PREFIX) :], validate=True)) >= 16
    except ValueError:
        return False


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def signed_headers(
    msg_id: str, body: bytes, secrets_: Sequence[str], timestamp: int | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body``, signed with every secret."""
    at = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(at),
        "webhook-signature": " ".join(signature(s, msg_id, at, body) for s in secrets_),
    }
