"""``chatlane channels``: connect, list and disconnect a tenant's messaging bots (the
channel endpoints the API manages at ``/v1/channels``), straight in Redis."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar, cast, get_args

import click
from pydantic import ValidationError

from shared.addresses import TargetRefused, check, parse
from shared.channels.credentials import completed
from shared.channels.endpoints import (
    DEFAULT_DEBOUNCE_S,
    DEFAULT_FAILURE_REPLY,
    PLATFORMS,
    ChannelEndpoint,
    Directory,
    new_endpoint_id,
)
from shared.channels.platform import CHANNELS, ChannelName
from shared.keys import TENANT_ID_PATTERN, GlobalKeys
from shared.redis import async_client
from shared.settings import Settings, Strategy
from shared.store.records import now_ms

T = TypeVar("T")
TEXT_MAX = 1000
URL_MAX = 2048


def _with_redis(action: Callable[[Any, GlobalKeys], Awaitable[T]]) -> T:
    """Run ``action`` on a client of its own for the Redis that ``Settings()`` names."""
    settings = Settings()

    async def run() -> T:
        client = async_client(settings.redis_url, name="chatlane-channels")
        try:
            return await action(client, GlobalKeys(settings.key_prefix))
        finally:
            await client.aclose()

    return asyncio.run(run())


def _tenant(_ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not re.fullmatch(TENANT_ID_PATTERN, value):
        raise click.BadParameter("1–64 characters of A-Za-z0-9_.-", param=param)
    return value


def _pairs(_ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    given: dict[str, str] = {}
    for pair in values:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{pair!r} is not name=value", param=param)
        if name in given:
            raise click.BadParameter(f"{name} is given twice", param=param)
        given[name] = value
    return given


def _url(_ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        if len(value) > URL_MAX:
            raise TargetRefused(f"at most {URL_MAX} characters")
        parse(value)
    except TargetRefused as refused:
        raise click.BadParameter(str(refused), param=param) from refused
    return value


def _text(_ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not 1 <= len(value) <= TEXT_MAX:
        raise click.BadParameter(f"1–{TEXT_MAX} characters", param=param)
    return value


def _credentials(channel: ChannelName, given: dict[str, str]) -> dict[str, str]:
    """``given`` checked as the API checks it, with the generated ones that were not
    given made."""
    try:
        return completed(channel, given)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc']) or channel}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        known = ", ".join((*PLATFORMS[channel].required, *PLATFORMS[channel].generated))
        raise click.BadParameter(
            f"{problems} ({channel} takes {known})", param_hint="--credential"
        ) from exc


def _reachable(api_base: str | None) -> None:
    """Refuse an ``api_base`` the worker would refuse to send to (a non-public address,
    unless CHATLANE_CHANNEL_ALLOW_PRIVATE)."""
    if api_base is None:
        return
    try:
        asyncio.run(check(api_base, allow_private=Settings().channel_allow_private))
    except TargetRefused as refused:
        allow = "set CHATLANE_CHANNEL_ALLOW_PRIVATE=true to allow it"
        raise click.BadParameter(f"{refused} ({allow})", param_hint="--api-base") from refused


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _takes() -> str:
    """The credentials each channel takes, the generated ones in []."""
    return "; ".join(
        " ".join([name, *p.required, *(f"[{g}]" for g in p.generated)])
        for name, p in PLATFORMS.items()
    )


tenant_option = click.option(
    "--tenant", required=True, callback=_tenant, help="The tenant the bot belongs to."
)


@click.group()
def channels() -> None:
    """Messaging channel endpoints: a tenant's bots on Telegram, Slack, WhatsApp Cloud and
    Twilio (what the API manages at /v1/channels).

    Each endpoint has a webhook, https://<your host>/v1/channels/CHANNEL/ID/webhook, to
    register with the platform; its messages become turns of the chat's session.
    """


@channels.command()
@click.argument("channel", type=click.Choice(CHANNELS))
@tenant_option
@click.option(
    "--credential",
    "credentials",
    multiple=True,
    callback=_pairs,
    metavar="NAME=VALUE",
    help=f"Repeat for each: {_takes()}. Those in [] are made when omitted.",
)
@click.option("--api-base", callback=_url, help="The platform's API, if not its public one.")
@click.option(
    "--public-url",
    callback=_url,
    help="Twilio: the webhook URL exactly as configured there (behind a proxy).",
)
@click.option(
    "--strategy",
    type=click.Choice(get_args(Strategy)),
    help="Double texting for the chats.  [default: coalesce]",
)
@click.option(
    "--debounce-s",
    type=click.FloatRange(0, 60),
    help=f"Seconds to wait for more messages.  [default: {DEFAULT_DEBOUNCE_S}]",
)
@click.option(
    "--unsupported-reply",
    callback=_text,
    help="Sent once for a message the bot cannot read (a photo, a file).  [default: nothing]",
)
@click.option(
    "--failure-reply",
    callback=_text,
    help=f"Sent when a turn fails.  [default: {DEFAULT_FAILURE_REPLY!r}]",
)
@click.option(
    "--per-second",
    type=click.IntRange(1, 1000),
    help="The most messages the bot sends per second.  [default: the platform's]",
)
def create(channel: str, tenant: str, credentials: dict[str, str], **options: Any) -> None:
    """Connect a CHANNEL bot for TENANT; print its id, webhook path and credentials (in
    full only this once)."""
    name = cast(ChannelName, channel)
    made = _credentials(name, credentials)
    _reachable(options["api_base"])
    endpoint = ChannelEndpoint.model_validate(
        {"id": new_endpoint_id(), "tenant": tenant, "channel": name, "credentials": made}
        | {key: value for key, value in options.items() if value is not None}
        | {"created_at": now_ms()}
    )
    _with_redis(lambda client, keys: Directory(client, keys).save(endpoint))
    click.echo(f"id={endpoint.id}")
    click.echo(f"webhook_path={endpoint.webhook_path}")
    for key, value in endpoint.credentials.items():
        click.echo(f"{key}={value}")
    click.echo(
        f"chatlane: {channel} endpoint {endpoint.id} made for tenant {tenant}; register "
        f"https://<your host>{endpoint.webhook_path} as its webhook with {channel}. The "
        "credentials are shown in full only now.",
        err=True,
    )


async def _every(client: Any, keys: GlobalKeys) -> list[ChannelEndpoint]:
    raw = await client.hgetall(keys.channels)
    found = [ChannelEndpoint.model_validate_json(value) for value in raw.values()]
    return sorted(found, key=lambda e: (e.created_at, e.id))


@channels.command(name="list")
@click.option("--tenant", callback=_tenant, help="Only this tenant's.  [default: every tenant's]")
def list_channels(tenant: str | None) -> None:
    """Endpoints: id, tenant, channel, webhook path, made, credentials (secret ones by
    their last four characters)."""
    if tenant is None:
        found = _with_redis(_every)
    else:
        found = _with_redis(lambda client, keys: Directory(client, keys).of_tenant(tenant))
    click.echo(
        f"{'id':<21}{'tenant':<24}{'channel':<10}{'webhook path':<51}{'created':<22}credentials"
    )
    for e in found:
        shown = " ".join(f"{key}={value}" for key, value in e.masked().items())
        click.echo(
            f"{e.id:<21}{e.tenant:<24}{e.channel:<10}{e.webhook_path:<51}"
            f"{_when(e.created_at):<22}{shown}"
        )


@channels.command()
@click.argument("endpoint_id")
@tenant_option
def delete(endpoint_id: str, tenant: str) -> None:
    """Disconnect the bot ENDPOINT_ID of TENANT: its webhook answers 404 (within 2 s)."""
    if not _with_redis(lambda client, keys: Directory(client, keys).remove(tenant, endpoint_id)):
        raise click.ClickException(f"no channel endpoint {endpoint_id} of tenant {tenant}")
    click.echo(f"chatlane: channel endpoint {endpoint_id} of tenant {tenant} is deleted")
