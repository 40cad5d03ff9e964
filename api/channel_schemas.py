"""The bodies of ``/v1/channels``: a channel endpoint as it is made (credentials per
platform), changed and shown."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.channels.credentials import (
    Credential,
    SlackCredentials,
    TelegramCredentials,
    TwilioCredentials,
    WhatsAppCredentials,
)
from shared.channels.endpoints import DEFAULT_DEBOUNCE_S, DEFAULT_FAILURE_REPLY, ChannelEndpoint
from shared.channels.lane import Reply
from shared.channels.platform import ChannelName
from shared.settings import Strategy

Text = Annotated[str, Field(min_length=1, max_length=1000)]


CLEARABLE = {
    "unsupported_reply": None,
    "failure_reply": None,
    "api_base": None,
    "public_url": None,
    "per_second": None,
}


class ChannelSettings(BaseModel):
    """What an endpoint does with its messages; every field may be changed later."""

    model_config = ConfigDict(extra="forbid")

    api_base: str | None = Field(
        default=None,
        max_length=2048,
        description="The platform's API, if not its public one (a proxy, a test double).",
    )
    public_url: str | None = Field(
        default=None,
        max_length=2048,
        description="Twilio: the webhook URL exactly as configured there (Twilio signs it); "
        "needed when a proxy stands between Twilio and chatlane.",
    )
    strategy: Strategy | None = Field(
        default=None, description="Double texting for the chats; by default `coalesce`."
    )
    debounce_s: float | None = Field(
        default=None, ge=0, le=60, description=f"By default {DEFAULT_DEBOUNCE_S} s."
    )
    unsupported_reply: Text | None = Field(
        default=None,
        description="Sent (once) for a message the bot cannot read: a photo, a sticker, a "
        "file. By default nothing is sent.",
    )
    failure_reply: Text | None = Field(
        default=None, description=f"Sent when a turn fails; by default {DEFAULT_FAILURE_REPLY!r}."
    )
    per_second: int | None = Field(
        default=None, ge=1, le=1000, description="The most messages the bot sends per second."
    )


class TelegramIn(ChannelSettings):
    channel: Literal["telegram"]
    credentials: TelegramCredentials


class SlackIn(ChannelSettings):
    channel: Literal["slack"]
    credentials: SlackCredentials


class WhatsAppIn(ChannelSettings):
    channel: Literal["whatsapp"]
    credentials: WhatsAppCredentials


class TwilioIn(ChannelSettings):
    channel: Literal["twilio"]
    credentials: TwilioCredentials


ChannelIn = Annotated[TelegramIn | SlackIn | WhatsAppIn | TwilioIn, Field(discriminator="channel")]


class ChannelPatch(ChannelSettings):
    credentials: dict[str, Credential] | None = Field(
        default=None, description="Credentials to replace (the others are kept)."
    )
    clear: list[str] = Field(
        default_factory=list,
        max_length=len(CLEARABLE),
        description="Optional settings to reset to their defaults: `unsupported_reply`, "
        "`failure_reply` (to send nothing), `api_base`, `public_url`, `per_second`.",
    )


class ChannelOut(BaseModel):
    id: str
    object: str = "channel_endpoint"
    channel: ChannelName
    webhook_url: str = Field(description="Register this URL with the platform.")
    credentials: dict[str, str] = Field(
        description="Secret ones by their last four characters; in full only in the answer "
        "that made them."
    )
    api_base: str | None
    public_url: str | None
    strategy: Strategy
    debounce_s: float
    unsupported_reply: str | None
    failure_reply: str | None
    per_second: int
    created_at: datetime

    @classmethod
    def of(cls, endpoint: ChannelEndpoint, base_url: str, *, reveal: bool = False) -> ChannelOut:
        return cls(
            id=endpoint.id,
            channel=endpoint.channel,
            webhook_url=base_url.rstrip("/") + endpoint.webhook_path,
            credentials=dict(endpoint.credentials) if reveal else endpoint.masked(),
            api_base=endpoint.api_base,
            public_url=endpoint.public_url,
            strategy=endpoint.strategy,
            debounce_s=endpoint.debounce_s,
            unsupported_reply=endpoint.unsupported_reply,
            failure_reply=endpoint.failure_reply,
            per_second=endpoint.per_second or endpoint.platform.per_second,
            created_at=datetime.fromtimestamp(endpoint.created_at / 1000, tz=UTC),
        )


class ChannelsPage(BaseModel):
    object: str = "list"
    data: list[ChannelOut]


class DeadRepliesPage(BaseModel):
    object: str = "list"
    next_before: str | None = Field(
        default=None, description="Pass as `before` for the next page (when `has_more`)."
    )
    data: list[Reply]
    has_more: bool
