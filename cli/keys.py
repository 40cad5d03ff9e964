"""``chatlane keys``: make, list and revoke the API keys that map callers to tenants."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

import click

from shared.apikeys import KeyRing, with_ring
from shared.keys import TENANT_ID_PATTERN
from shared.settings import Settings

T = TypeVar("T")


def _with_ring(action: Callable[[KeyRing], Awaitable[T]]) -> T:
    settings = Settings()
    return with_ring(settings.redis_url, settings.key_prefix, action)


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@click.group()
def keys() -> None:
    """API keys (kept in Redis as SHA-256 digests; a key is shown once, when made).

    Once any key exists, every API request needs one (Authorization: Bearer KEY, or
    X-API-Key: KEY), and acts for that key's tenant alone.
    """


@keys.command()
@click.option("--tenant", required=True, help="The tenant the key acts for.")
@click.option("--name", default="", help="A note to tell keys apart (shown by `list`).")
def create(tenant: str, name: str) -> None:
    """Make a key for TENANT and print it (only this once)."""
    if not re.fullmatch(TENANT_ID_PATTERN, tenant):
        raise click.BadParameter("1–64 characters of A-Za-z0-9_.-", param_hint="--tenant")
    record, plain = _with_ring(lambda ring: ring.create(tenant, name))
    click.echo(plain)
    click.echo(
        f"chatlane: key {record.id} made for tenant {tenant}; it is shown only now", err=True
    )


@keys.command(name="list")
def list_keys() -> None:
    """Every key: id, tenant, name, made, revoked (never the key itself)."""
    found = _with_ring(lambda ring: ring.all())
    click.echo(f"{'id':<14}{'tenant':<24}{'created':<22}{'revoked':<22}name")
    for key in found:
        click.echo(
            f"{key.id:<14}{key.tenant:<24}{_when(key.created_at):<22}"
            f"{_when(key.revoked_at):<22}{key.name}"
        )


@keys.command()
@click.argument("key_id")
def revoke(key_id: str) -> None:
    """Revoke the key KEY_ID (from `list`, or the whole key); every API replica refuses it
    from then on."""
    record = _with_ring(lambda ring: ring.revoke(key_id))
    if record is None:
        raise click.ClickException(f"no key {key_id}")
    click.echo(f"chatlane: key {record.id} of tenant {record.tenant} is revoked")
