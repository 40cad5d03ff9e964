"""Inbound webhook requests as Slack, Twilio, WhatsApp Cloud and Telegram send them.

The payload builders return the platform's JSON (or, for Twilio, its form fields) as a dict;
the ``*_request`` functions turn one into a `SignedRequest`: the exact body bytes and the
headers, signed the way the platform signs. Where the platform publishes SDK code for it, that
code signs (``slack_sdk``'s ``SignatureVerifier``, ``twilio``'s ``RequestValidator``), so the
production verifier is checked against an independent implementation. WhatsApp has no such
SDK; its ``X-Hub-Signature-256`` is computed here with ``hmac``.

Every id a builder makes up (event ids, message ids, update ids) is unique within the process,
so two calls give two distinct deliveries unless the test passes the same id on purpose (as a
platform's retry would).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlencode

from slack_sdk.signature import SignatureVerifier
from twilio.request_validator import RequestValidator

from tests.support.platforms import (
    TWILIO_ACCOUNT_SID,
    TWILIO_AUTH_TOKEN,
    TWILIO_SMS_NUMBER,
    WHATSAPP_PHONE_NUMBER_ID,
)

# Secrets and ids the inbound side is configured with in tests (the outbound credentials the
# fake platforms accept, Twilio's auth token among them, live in tests.support.platforms).
SLACK_SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
SLACK_TEAM_ID = "T0000000001"
SLACK_APP_ID = "A0000000001"
SLACK_BOT_USER_ID = "U0000BOT001"
TELEGRAM_SECRET_TOKEN = "telegram-webhook-secret_0123456789"
WHATSAPP_APP_SECRET = "f1e2d3c4b5a697880011223344556677"
WHATSAPP_VERIFY_TOKEN = "whatsapp-verify-token-for-tests"
WHATSAPP_WABA_ID = "102290129340398"
WHATSAPP_DISPLAY_PHONE_NUMBER = "15550783881"

_ids = itertools.count(1)


def _next() -> int:
    return next(_ids)


@dataclass(frozen=True)
class SignedRequest:
    """What an HTTP client sends: ``body`` (the exact bytes signed) and ``headers``.

    ``form`` is set for a form-encoded request (Twilio), as the fields ``body`` encodes;
    ``url`` is set when the signature covers the URL (Twilio), and is then the URL to post to.
    ``kwargs()`` gives ``httpx``'s ``content=``/``headers=`` arguments.
    """

    body: bytes
    headers: dict[str, str]
    form: dict[str, str] | None = None
    url: str | None = None

    def kwargs(self) -> dict[str, Any]:
        """``client.post(url, **request.kwargs())`` sends exactly what was signed."""
        return {"content": self.body, "headers": dict(self.headers)}

    def json(self) -> Any:
        """The body parsed as JSON (not for a form-encoded request)."""
        return json.loads(self.body)


# -- Slack -----------------------------------------------------------------------------------


def slack_message(
    *,
    channel: str,
    user: str,
    text: str,
    channel_type: Literal["im", "channel", "group", "mpim"] = "im",
    ts: str | None = None,
    thread_ts: str | None = None,
    bot_id: str | None = None,
    subtype: str | None = None,
    event_id: str | None = None,
    team_id: str = SLACK_TEAM_ID,
) -> dict[str, Any]:
    """An ``event_callback`` carrying a ``message`` event.

    A bot's own message has ``bot_id`` (and, for a legacy bot, ``subtype="bot_message"``);
    ``thread_ts`` puts it in a thread. ``ts`` defaults to a fresh unique timestamp.
    """
    ts = ts or _slack_ts()
    event: dict[str, Any] = {
        "type": "message",
        "channel": channel,
        "channel_type": channel_type,
        "user": user,
        "text": text,
        "ts": ts,
        "event_ts": ts,
        "team": team_id,
    }
    if thread_ts is not None:
        event["thread_ts"] = thread_ts
    if bot_id is not None:
        event["bot_id"] = bot_id
    if subtype is not None:
        event["subtype"] = subtype
    return _slack_envelope(event, event_id=event_id, team_id=team_id)


def slack_app_mention(
    *,
    channel: str,
    user: str,
    text: str,
    ts: str | None = None,
    thread_ts: str | None = None,
    event_id: str | None = None,
    team_id: str = SLACK_TEAM_ID,
    bot_user_id: str = SLACK_BOT_USER_ID,
) -> dict[str, Any]:
    """An ``event_callback`` carrying an ``app_mention`` event.

    ``text`` is what follows the mention; the event's text starts with ``<@bot_user_id>`` as
    Slack's does.
    """
    ts = ts or _slack_ts()
    event: dict[str, Any] = {
        "type": "app_mention",
        "channel": channel,
        "user": user,
        "text": f"<@{bot_user_id}> {text}",
        "ts": ts,
        "event_ts": ts,
        "team": team_id,
    }
    if thread_ts is not None:
        event["thread_ts"] = thread_ts
    return _slack_envelope(event, event_id=event_id, team_id=team_id)


def slack_url_verification(challenge: str | None = None) -> dict[str, Any]:
    """The handshake Slack sends when the events URL is set; the app echoes ``challenge``."""
    return {
        "token": "Jhj5dZrVaK7ZwHHjRyZWjbDl",
        "challenge": challenge or secrets.token_urlsafe(36),
        "type": "url_verification",
    }


def slack_request(
    payload: dict[str, Any] | bytes,
    *,
    secret: str = SLACK_SIGNING_SECRET,
    timestamp: int | None = None,
    retry_num: int | None = None,
) -> SignedRequest:
    """``payload`` as Slack posts it, signed by ``slack_sdk`` with ``secret``.

    ``timestamp`` (unix seconds) defaults to now; Slack's verifier refuses one more than five
    minutes off. ``retry_num`` adds the headers of Slack's redelivery after a timeout.
    """
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    signature = SignatureVerifier(secret).generate_signature(timestamp=stamp, body=body)
    assert signature is not None
    headers = {
        "Content-Type": "application/json",
        "X-Slack-Request-Timestamp": stamp,
        "X-Slack-Signature": signature,
        "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
    }
    if retry_num is not None:
        headers["X-Slack-Retry-Num"] = str(retry_num)
        headers["X-Slack-Retry-Reason"] = "http_timeout"
    return SignedRequest(body=body, headers=headers)


def _slack_envelope(event: dict[str, Any], *, event_id: str | None, team_id: str) -> dict[str, Any]:
    return {
        "token": "Jhj5dZrVaK7ZwHHjRyZWjbDl",
        "team_id": team_id,
        "context_team_id": team_id,
        "api_app_id": SLACK_APP_ID,
        "event": event,
        "type": "event_callback",
        "event_id": event_id or f"Ev{_next():010d}",
        "event_time": int(time.time()),
        "authorizations": [
            {
                "enterprise_id": None,
                "team_id": team_id,
                "user_id": SLACK_BOT_USER_ID,
                "is_bot": True,
                "is_enterprise_install": False,
            }
        ],
        "is_ext_shared_channel": False,
        "event_context": "4-" + secrets.token_urlsafe(24),
    }


def _slack_ts() -> str:
    return f"{int(time.time())}.{_next():06d}"


# -- Twilio ----------------------------------------------------------------------------------


def twilio_message_params(
    *,
    from_: str,
    body: str,
    to: str = TWILIO_SMS_NUMBER,
    message_sid: str | None = None,
    account_sid: str = TWILIO_ACCOUNT_SID,
    profile_name: str = "Ada",
) -> dict[str, str]:
    """The form fields of an inbound SMS, or a WhatsApp message when ``from_`` is ``whatsapp:+...``.

    (For WhatsApp, ``to`` should be a ``whatsapp:`` number too, and Twilio adds the sender's
    ``ProfileName`` and ``WaId``.)
    """
    sid = message_sid or _twilio_sid("SM")
    params = {
        "ToCountry": "US",
        "SmsMessageSid": sid,
        "NumMedia": "0",
        "SmsSid": sid,
        "SmsStatus": "received",
        "Body": body,
        "To": to,
        "NumSegments": "1",
        "MessageSid": sid,
        "AccountSid": account_sid,
        "From": from_,
        "ApiVersion": "2010-04-01",
    }
    if from_.startswith("whatsapp:"):
        params["ProfileName"] = profile_name
        params["WaId"] = from_.removeprefix("whatsapp:").lstrip("+")
        params["MessageType"] = "text"
        del params["ToCountry"]
    return params


def twilio_media_params(
    *,
    from_: str,
    to: str = TWILIO_SMS_NUMBER,
    media_url: str = "https://api.twilio.com/2010-04-01/Accounts/AC/Messages/MM/Media/ME",
    content_type: str = "image/jpeg",
    message_sid: str | None = None,
    account_sid: str = TWILIO_ACCOUNT_SID,
) -> dict[str, str]:
    """The form fields of an inbound MMS (or WhatsApp image): one media item, an empty ``Body``."""
    params = twilio_message_params(
        from_=from_,
        body="",
        to=to,
        message_sid=message_sid or _twilio_sid("MM"),
        account_sid=account_sid,
    )
    params["NumMedia"] = "1"
    params["MediaUrl0"] = media_url
    params["MediaContentType0"] = content_type
    if "MessageType" in params:
        params["MessageType"] = "image"
    return params


def twilio_status_params(
    *,
    message_sid: str,
    status: str = "delivered",
    to: str = "+15551230000",
    from_: str = TWILIO_SMS_NUMBER,
    account_sid: str = TWILIO_ACCOUNT_SID,
    error_code: str | None = None,
) -> dict[str, str]:
    """The form fields of a status callback for an outbound message (``MessageStatus``)."""
    params = {
        "SmsSid": message_sid,
        "SmsStatus": status,
        "MessageStatus": status,
        "To": to,
        "MessageSid": message_sid,
        "AccountSid": account_sid,
        "From": from_,
        "ApiVersion": "2010-04-01",
    }
    if error_code is not None:
        params["ErrorCode"] = error_code
    return params


def twilio_request(
    url: str, params: dict[str, str], *, auth_token: str = TWILIO_AUTH_TOKEN
) -> SignedRequest:
    """``params`` form-encoded as Twilio posts them to ``url``, signed by the ``twilio`` SDK.

    The signature covers ``url`` exactly as given (scheme, host, port, path and query), so it
    must be the URL the server will reconstruct for the request it receives.
    """
    signature = RequestValidator(auth_token).compute_signature(url, params)
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Twilio-Signature": signature,
        "User-Agent": "TwilioProxy/1.1",
        "I-Twilio-Idempotency-Token": secrets.token_hex(16),
    }
    return SignedRequest(
        body=urlencode(params).encode(), headers=headers, form=dict(params), url=url
    )


def _twilio_sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


# -- WhatsApp Cloud --------------------------------------------------------------------------


def whatsapp_text_message(
    *,
    from_: str,
    text: str,
    name: str = "Ada",
    message_id: str | None = None,
    timestamp: int | None = None,
    phone_number_id: str = WHATSAPP_PHONE_NUMBER_ID,
) -> dict[str, Any]:
    """A ``messages`` notification carrying one text message from ``from_`` (digits, no ``+``)."""
    message = _whatsapp_message(from_, message_id, timestamp, "text")
    message["text"] = {"body": text}
    return _whatsapp_envelope(
        {"contacts": [{"profile": {"name": name}, "wa_id": from_}], "messages": [message]},
        phone_number_id,
    )


def whatsapp_media_message(
    *,
    from_: str,
    kind: Literal["image", "sticker", "audio", "video", "document"] = "image",
    caption: str | None = None,
    name: str = "Ada",
    message_id: str | None = None,
    timestamp: int | None = None,
    phone_number_id: str = WHATSAPP_PHONE_NUMBER_ID,
) -> dict[str, Any]:
    """A ``messages`` notification carrying one media message (no text; an optional caption)."""
    message = _whatsapp_message(from_, message_id, timestamp, kind)
    media: dict[str, Any] = {
        "mime_type": {
            "image": "image/jpeg",
            "sticker": "image/webp",
            "audio": "audio/ogg; codecs=opus",
            "video": "video/mp4",
            "document": "application/pdf",
        }[kind],
        "sha256": secrets.token_urlsafe(32),
        "id": str(10**15 + _next()),
    }
    if kind == "sticker":
        media["animated"] = False
    if caption is not None and kind in ("image", "video", "document"):
        media["caption"] = caption
    message[kind] = media
    return _whatsapp_envelope(
        {"contacts": [{"profile": {"name": name}, "wa_id": from_}], "messages": [message]},
        phone_number_id,
    )


def whatsapp_reaction(
    *,
    from_: str,
    reacted_to: str,
    emoji: str = "👍",
    name: str = "Ada",
    message_id: str | None = None,
    phone_number_id: str = WHATSAPP_PHONE_NUMBER_ID,
) -> dict[str, Any]:
    """A ``messages`` notification carrying a reaction to the message ``reacted_to`` (a wamid)."""
    message = _whatsapp_message(from_, message_id, None, "reaction")
    message["reaction"] = {"message_id": reacted_to, "emoji": emoji}
    return _whatsapp_envelope(
        {"contacts": [{"profile": {"name": name}, "wa_id": from_}], "messages": [message]},
        phone_number_id,
    )


def whatsapp_status(
    *,
    message_id: str,
    recipient: str,
    status: Literal["sent", "delivered", "read", "failed"] = "delivered",
    phone_number_id: str = WHATSAPP_PHONE_NUMBER_ID,
) -> dict[str, Any]:
    """A ``statuses`` notification for an outbound message (``message_id`` is its wamid)."""
    entry: dict[str, Any] = {
        "id": message_id,
        "status": status,
        "timestamp": str(int(time.time())),
        "recipient_id": recipient,
    }
    if status != "failed":
        entry["conversation"] = {
            "id": secrets.token_hex(16),
            "origin": {"type": "service"},
        }
        entry["pricing"] = {"billable": True, "pricing_model": "CBP", "category": "service"}
    else:
        entry["errors"] = [{"code": 131047, "title": "Re-engagement message"}]
    return _whatsapp_envelope({"statuses": [entry]}, phone_number_id)


def whatsapp_request(
    payload: dict[str, Any] | bytes, *, app_secret: str = WHATSAPP_APP_SECRET
) -> SignedRequest:
    """``payload`` as Meta posts it, with ``X-Hub-Signature-256`` over the exact body bytes.

    The body is compact JSON with non-ASCII escaped (``\\uXXXX``) as Meta sends it, so a
    verifier that re-serializes the parsed JSON instead of hashing the raw bytes fails.
    """
    body = (
        payload
        if isinstance(payload, bytes)
        else json.dumps(payload, separators=(",", ":")).encode()
    )
    digest = hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": "application/json",
        "X-Hub-Signature-256": f"sha256={digest}",
        "User-Agent": "facebookexternalua",
    }
    return SignedRequest(body=body, headers=headers)


def whatsapp_verification_params(
    *, verify_token: str = WHATSAPP_VERIFY_TOKEN, challenge: str | None = None
) -> dict[str, str]:
    """The query of Meta's subscription ``GET``; the app answers it with ``hub.challenge``."""
    return {
        "hub.mode": "subscribe",
        "hub.verify_token": verify_token,
        "hub.challenge": challenge or str(10**9 + _next()),
    }


def _whatsapp_message(
    from_: str, message_id: str | None, timestamp: int | None, kind: str
) -> dict[str, Any]:
    return {
        "from": from_,
        "id": message_id or "wamid." + secrets.token_urlsafe(30),
        "timestamp": str(int(time.time()) if timestamp is None else timestamp),
        "type": kind,
    }


def _whatsapp_envelope(value: dict[str, Any], phone_number_id: str) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": WHATSAPP_WABA_ID,
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": WHATSAPP_DISPLAY_PHONE_NUMBER,
                                "phone_number_id": phone_number_id,
                            },
                            **value,
                        },
                    }
                ],
            }
        ],
    }


# -- Telegram --------------------------------------------------------------------------------


def telegram_text_message(
    *,
    chat_id: int,
    text: str,
    user_id: int | None = None,
    first_name: str = "Ada",
    chat_type: Literal["private", "group", "supergroup"] = "private",
    message_thread_id: int | None = None,
    update_id: int | None = None,
    message_id: int | None = None,
) -> dict[str, Any]:
    """An Update carrying a text ``message``; in a private chat the sender is the chat."""
    message = _telegram_message(
        chat_id, user_id, first_name, chat_type, message_thread_id, message_id
    )
    message["text"] = text
    return {"update_id": update_id or _update_id(), "message": message}


def telegram_sticker_message(
    *, chat_id: int, user_id: int | None = None, update_id: int | None = None
) -> dict[str, Any]:
    """An Update carrying a sticker: a ``message`` with no ``text``."""
    message = _telegram_message(chat_id, user_id, "Ada", "private", None, None)
    message["sticker"] = {
        "file_id": "CAACAgIAAxkBAAE" + secrets.token_urlsafe(24),
        "file_unique_id": "AgAD" + secrets.token_urlsafe(8),
        "type": "regular",
        "width": 512,
        "height": 512,
        "is_animated": False,
        "is_video": False,
        "emoji": "😀",
    }
    return {"update_id": update_id or _update_id(), "message": message}


def telegram_photo_message(
    *,
    chat_id: int,
    caption: str | None = None,
    user_id: int | None = None,
    update_id: int | None = None,
) -> dict[str, Any]:
    """An Update carrying a photo: a ``message`` with ``photo`` sizes, no ``text``."""
    message = _telegram_message(chat_id, user_id, "Ada", "private", None, None)
    message["photo"] = [
        {
            "file_id": "AgACAgIAAxkBAAE" + secrets.token_urlsafe(24),
            "file_unique_id": "AQAD" + secrets.token_urlsafe(8),
            "file_size": size * 60,
            "width": size,
            "height": size,
        }
        for size in (90, 320, 800)
    ]
    if caption is not None:
        message["caption"] = caption
    return {"update_id": update_id or _update_id(), "message": message}


def telegram_edited_message(
    *,
    chat_id: int,
    message_id: int,
    text: str,
    user_id: int | None = None,
    update_id: int | None = None,
) -> dict[str, Any]:
    """An Update carrying ``edited_message``: message ``message_id``'s text is now ``text``."""
    message = _telegram_message(chat_id, user_id, "Ada", "private", None, message_id)
    message["edit_date"] = message["date"] + 5
    message["text"] = text
    return {"update_id": update_id or _update_id(), "edited_message": message}


def telegram_callback_query(
    *,
    chat_id: int,
    data: str,
    user_id: int | None = None,
    update_id: int | None = None,
) -> dict[str, Any]:
    """An Update carrying a ``callback_query`` (an inline-keyboard button press) with ``data``."""
    sender = _telegram_user(user_id or _default_user(chat_id), "Ada")
    message = _telegram_message(chat_id, None, "Bot", "private", None, None)
    message["from"] = {"id": 7000000001, "is_bot": True, "first_name": "Bot", "username": "a_bot"}
    message["text"] = "Pick one"
    return {
        "update_id": update_id or _update_id(),
        "callback_query": {
            "id": str(4382000000000000000 + _next()),
            "from": sender,
            "message": message,
            "chat_instance": str(-(10**18) - _next()),
            "data": data,
        },
    }


def telegram_request(
    update: dict[str, Any] | bytes, *, secret_token: str | None = TELEGRAM_SECRET_TOKEN
) -> SignedRequest:
    """``update`` as Telegram posts it, with ``X-Telegram-Bot-Api-Secret-Token`` unless None."""
    body = update if isinstance(update, bytes) else json.dumps(update).encode()
    headers = {"Content-Type": "application/json"}
    if secret_token is not None:
        headers["X-Telegram-Bot-Api-Secret-Token"] = secret_token
    return SignedRequest(body=body, headers=headers)


def _telegram_user(user_id: int, first_name: str) -> dict[str, Any]:
    return {"id": user_id, "is_bot": False, "first_name": first_name, "language_code": "en"}


def _telegram_message(
    chat_id: int,
    user_id: int | None,
    first_name: str,
    chat_type: str,
    message_thread_id: int | None,
    message_id: int | None,
) -> dict[str, Any]:
    chat: dict[str, Any] = {"id": chat_id, "type": chat_type}
    if chat_type == "private":
        chat["first_name"] = first_name
    else:
        chat["title"] = "Test group"
    message: dict[str, Any] = {
        "message_id": message_id or _next(),
        "from": _telegram_user(user_id or _default_user(chat_id), first_name),
        "chat": chat,
        "date": int(time.time()),
    }
    if message_thread_id is not None:
        message["message_thread_id"] = message_thread_id
        message["is_topic_message"] = True
    return message


def _default_user(chat_id: int) -> int:
    """The sender when none is given: the chat itself if private, else one fixed member."""
    return chat_id if chat_id > 0 else 424242424


def _update_id() -> int:
    return 100_000_000 + _next()


# -- any platform ----------------------------------------------------------------------------


def text_message_request(
    channel: str,
    chat: str,
    text: str,
    *,
    url: str = "",
    message_id: str | None = None,
    secrets_: Mapping[str, str] | None = None,
    to: str = TWILIO_SMS_NUMBER,
) -> SignedRequest:
    """One text message from ``chat`` as ``channel``'s platform posts it to its webhook at
    ``url`` (Twilio signs the URL), signed with the test credentials or an endpoint's own
    (``secrets_``: ``secret_token``, ``phone_number_id``, ``account_sid``, ``auth_token``).
    ``message_id``: the platform's id, to imitate a redelivery; ``to``: the Twilio number."""
    made = secrets_ or {}
    if channel == "telegram":
        update = telegram_text_message(chat_id=int(chat), text=text)
        if message_id is not None:
            update["update_id"] = int(message_id)
        return telegram_request(
            update, secret_token=made.get("secret_token", TELEGRAM_SECRET_TOKEN)
        )
    if channel == "slack":
        return slack_request(
            slack_message(channel=chat, user="U0000USER1", text=text, event_id=message_id)
        )
    if channel == "whatsapp":
        number = made.get("phone_number_id", WHATSAPP_PHONE_NUMBER_ID)
        return whatsapp_request(
            whatsapp_text_message(
                from_=chat, text=text, message_id=message_id, phone_number_id=number
            )
        )
    params = twilio_message_params(
        from_=chat,
        body=text,
        to=to,
        message_sid=message_id,
        account_sid=made.get("account_sid", TWILIO_ACCOUNT_SID),
    )
    return twilio_request(url, params, auth_token=made.get("auth_token", TWILIO_AUTH_TOKEN))
