"""The credentials each platform's endpoint takes, checked the one way wherever an
endpoint is made or changed (``POST``/``PATCH /v1/channels``, ``chatlane channels``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from shared.channels.endpoints import PLATFORMS, new_token
from shared.channels.platform import ChannelName

Credential = Annotated[str, Field(min_length=1, max_length=512)]


class _Credentials(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TelegramCredentials(_Credentials):
    bot_token: Credential = Field(description="From @BotFather.")
    secret_token: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,256}$")] | None = Field(
        default=None,
        description="Give it to `setWebhook` as `secret_token`; made when omitted.",
    )


class SlackCredentials(_Credentials):
    bot_token: Credential = Field(description="The app's bot token, `xoxb-…`.")
    signing_secret: Credential = Field(description="Basic Information → Signing Secret.")


class WhatsAppCredentials(_Credentials):
    access_token: Credential = Field(description="A system user's access token.")
    app_secret: Credential = Field(description="App settings → Basic → App Secret.")
    phone_number_id: Credential = Field(description="The business number's id.")
    verify_token: Credential | None = Field(
        default=None, description="Give it to Meta as the Verify Token; made when omitted."
    )


class TwilioCredentials(_Credentials):
    account_sid: Credential = Field(description="`AC…`.")
    auth_token: Credential = Field(description="The account's auth token (it signs webhooks).")


CREDENTIALS: dict[ChannelName, type[_Credentials]] = {
    "telegram": TelegramCredentials,
    "slack": SlackCredentials,
    "whatsapp": WhatsAppCredentials,
    "twilio": TwilioCredentials,
}


def checked(channel: ChannelName, given: Mapping[str, str]) -> dict[str, str]:
    """``given`` as ``channel`` takes it (a missing, unknown or malformed credential
    raises pydantic's ``ValidationError``)."""
    return CREDENTIALS[channel].model_validate(given).model_dump(exclude_none=True)


def completed(channel: ChannelName, given: Mapping[str, str]) -> dict[str, str]:
    """``given``, checked, with the secrets chatlane makes for those not given."""
    made = {name: new_token() for name in PLATFORMS[channel].generated}
    return made | checked(channel, given)
