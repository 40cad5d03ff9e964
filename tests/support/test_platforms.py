"""The platforms fake answers as the real send APIs do, and the inbound builders sign as the
platforms' own SDKs verify."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from slack_sdk.signature import SignatureVerifier
from twilio.request_validator import RequestValidator

from tests.support import platform_requests as inbound
from tests.support.platforms import (
    SLACK_BOT_TOKEN,
    TELEGRAM_TOKEN,
    TWILIO_ACCOUNT_SID,
    TWILIO_AUTH_TOKEN,
    TWILIO_SMS_NUMBER,
    WHATSAPP_PHONE_NUMBER_ID,
    WHATSAPP_TOKEN,
    Platform,
    PlatformsFake,
    PlatformsThread,
)

CHAT: dict[Platform, str] = {
    "telegram": "4242",
    "slack": "D0123ABCD",
    "twilio": "+15551230000",
    "whatsapp": "15551230000",
}


@pytest.fixture
async def fake() -> AsyncIterator[PlatformsFake]:
    started = await PlatformsFake().start()
    yield started
    await started.stop()


def request_for(
    platform: Platform, text: str, *, good: bool = True, thread: str | None = None
) -> dict[str, Any]:
    """``httpx`` arguments for one send, as each platform's client would make it."""
    chat = CHAT[platform]
    if platform == "telegram":
        token = TELEGRAM_TOKEN if good else "1:nope"
        body: dict[str, Any] = {"chat_id": int(chat), "text": text}
        if thread is not None:
            body["message_thread_id"] = int(thread)
        return {"url": f"/bot{token}/sendMessage", "json": body}
    if platform == "slack":
        token = SLACK_BOT_TOKEN if good else "xoxb-nope"
        body = {"channel": chat, "text": text}
        if thread is not None:
            body["thread_ts"] = thread
        return {
            "url": "/api/chat.postMessage",
            "json": body,
            "headers": {"Authorization": f"Bearer {token}"},
        }
    if platform == "twilio":
        secret = TWILIO_AUTH_TOKEN if good else "nope"
        return {
            "url": f"/2010-04-01/Accounts/{TWILIO_ACCOUNT_SID}/Messages.json",
            "data": {"To": chat, "From": TWILIO_SMS_NUMBER, "Body": text},
            "auth": (TWILIO_ACCOUNT_SID, secret),
        }
    token = WHATSAPP_TOKEN if good else "EAAnope"
    return {
        "url": f"/{WHATSAPP_PHONE_NUMBER_ID}/messages",
        "json": {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": chat,
            "type": "text",
            "text": {"body": text},
        },
        "headers": {"Authorization": f"Bearer {token}"},
    }


async def send(
    client: httpx.AsyncClient, platform: Platform, text: str, **options: Any
) -> httpx.Response:
    arguments = request_for(platform, text, **options)
    return await client.post(arguments.pop("url"), **arguments)


@pytest.mark.parametrize("platform", ["telegram", "slack", "twilio", "whatsapp"])
async def test_an_accepted_send_is_answered_as_the_platform_does_and_recorded(
    fake: PlatformsFake, platform: Platform
) -> None:
    async with httpx.AsyncClient(base_url=fake.base_url) as client:
        first = await send(client, platform, "hello")
        second = await send(client, platform, "again")

    assert first.status_code == (201 if platform == "twilio" else 200)
    answer, later = first.json(), second.json()
    if platform == "telegram":
        assert answer["ok"] is True
        assert answer["result"]["chat"]["id"] == 4242
        assert answer["result"]["text"] == "hello"
        assert later["result"]["message_id"] != answer["result"]["message_id"]
    elif platform == "slack":
        assert answer["ok"] is True
        assert answer["channel"] == CHAT["slack"]
        assert answer["message"]["text"] == "hello"
        assert later["ts"] != answer["ts"]
    elif platform == "twilio":
        assert answer["sid"].startswith("SM") and len(answer["sid"]) == 34
        assert (answer["status"], answer["to"], answer["from"], answer["body"]) == (
            "queued",
            CHAT["twilio"],
            TWILIO_SMS_NUMBER,
            "hello",
        )
    else:
        assert answer["messaging_product"] == "whatsapp"
        assert answer["contacts"][0]["input"] == CHAT["whatsapp"]
        assert answer["messages"][0]["id"].startswith("wamid.")
        assert later["messages"][0]["id"] != answer["messages"][0]["id"]

    assert fake.sent_to(platform, CHAT[platform]) == ["hello", "again"]
    sent = fake.sent[0]
    assert (sent.platform, sent.chat, sent.thread, sent.text) == (
        platform,
        CHAT[platform],
        None,
        "hello",
    )
    assert (
        sent.sender
        == {
            "telegram": TELEGRAM_TOKEN,
            "slack": SLACK_BOT_TOKEN,
            "twilio": TWILIO_SMS_NUMBER,
            "whatsapp": WHATSAPP_PHONE_NUMBER_ID,
        }[platform]
    )
    assert fake.outcomes() == ["sent", "sent"]


async def test_threads_and_slack_forms_are_recorded(fake: PlatformsFake) -> None:
    async with httpx.AsyncClient(base_url=fake.base_url) as client:
        telegram = await send(client, "telegram", "in a topic", thread="17")
        slack = await client.post(
            "/api/chat.postMessage",
            data={
                "token": SLACK_BOT_TOKEN,
                "channel": "C0123",
                "text": "in a thread",
                "thread_ts": "1700000000.000100",
            },
        )

    assert telegram.json()["result"]["message_thread_id"] == 17
    assert slack.json()["message"]["thread_ts"] == "1700000000.000100"
    assert [(s.platform, s.chat, s.thread) for s in fake.sent] == [
        ("telegram", "4242", "17"),
        ("slack", "C0123", "1700000000.000100"),
    ]


@pytest.mark.parametrize(
    ("platform", "status", "error"),
    [
        ("telegram", 401, {"ok": False, "error_code": 401, "description": "Unauthorized"}),
        ("slack", 200, {"ok": False, "error": "invalid_auth"}),
        ("twilio", 401, {"code": 20003, "message": "Authenticate", "status": 401}),
        ("whatsapp", 401, {"code": 190, "type": "OAuthException"}),
    ],
)
async def test_wrong_credentials_are_refused_and_nothing_is_sent(
    fake: PlatformsFake, platform: Platform, status: int, error: dict[str, Any]
) -> None:
    async with httpx.AsyncClient(base_url=fake.base_url) as client:
        answer = await send(client, platform, "hello", good=False)

    assert answer.status_code == status
    body = answer.json()
    body = body["error"] if platform == "whatsapp" else body
    assert error.items() <= body.items()
    assert fake.sent == []
    assert [(a.platform, a.status, a.outcome) for a in fake.attempts] == [
        (platform, status, "unauthorized")
    ]


async def test_a_throttle_answers_429_with_the_platforms_retry_after_then_recovers(
    fake: PlatformsFake,
) -> None:
    fake.throttle(2, 3)
    fake.throttle(1, 7, platform="whatsapp")
    async with httpx.AsyncClient(base_url=fake.base_url) as client:
        telegram = await send(client, "telegram", "one")
        twilio = await send(client, "twilio", "two")
        slack = await send(client, "slack", "three")
        whatsapp = await send(client, "whatsapp", "four")
        whatsapp_again = await send(client, "whatsapp", "five")

    assert telegram.status_code == 429
    assert telegram.headers["Retry-After"] == "3"
    assert telegram.json() == {
        "ok": False,
        "error_code": 429,
        "description": "Too Many Requests: retry after 3",
        "parameters": {"retry_after": 3},
    }
    assert twilio.status_code == 429
    assert twilio.headers["Retry-After"] == "3"
    assert twilio.json()["code"] == 20429
    assert slack.status_code == 200
    assert whatsapp.status_code == 429
    assert whatsapp.headers["Retry-After"] == "7"
    assert whatsapp.json()["error"]["code"] == 130429
    assert whatsapp_again.status_code == 200
    assert fake.outcomes() == ["throttled", "throttled", "sent", "throttled", "sent"]
    assert [s.text for s in fake.sent] == ["three", "five"]


async def test_down_answers_503_with_the_platforms_error_until_up(fake: PlatformsFake) -> None:
    fake.down()
    async with httpx.AsyncClient(base_url=fake.base_url) as client:
        answers = {p: await send(client, p, "lost") for p in CHAT}
        fake.up()
        fake.down(platform="slack")
        telegram = await send(client, "telegram", "back")
        slack = await send(client, "slack", "still down")

    assert {p: a.status_code for p, a in answers.items()} == dict.fromkeys(CHAT, 503)
    assert answers["telegram"].json()["error_code"] == 503
    assert answers["slack"].json() == {"ok": False, "error": "service_unavailable"}
    assert answers["twilio"].json()["status"] == 503
    assert answers["whatsapp"].json()["error"]["is_transient"] is True
    assert (telegram.status_code, slack.status_code) == (200, 503)
    assert [s.text for s in fake.sent] == ["back"]


async def test_refusing_closes_the_port_and_up_reopens_the_same_one(fake: PlatformsFake) -> None:
    port = fake.port
    async with httpx.AsyncClient(base_url=fake.base_url) as client:
        assert (await send(client, "telegram", "before")).status_code == 200
        fake.down(refuse=True)
        with pytest.raises(httpx.ConnectError):  # even on the connection that was kept alive
            await send(client, "telegram", "during")
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
            pass
        fake.up()
        assert fake.port == port
        assert (await send(client, "telegram", "after")).status_code == 200

    assert fake.sent_to("telegram", "4242") == ["before", "after"]


async def test_an_oversized_or_empty_text_is_refused_as_the_platform_does(
    fake: PlatformsFake,
) -> None:
    async with httpx.AsyncClient(base_url=fake.base_url) as client:
        long = await send(client, "telegram", "x" * 4097)
        empty = await send(client, "whatsapp", "")
        twilio = await send(client, "twilio", "y" * 1601)

    assert long.status_code == 400
    assert long.json()["description"] == "Bad Request: message is too long"
    assert empty.status_code == 400
    assert empty.json()["error"]["code"] == 100
    assert twilio.json()["code"] == 21617
    assert fake.sent == []
    assert fake.outcomes() == ["bad_request"] * 3


def test_a_thread_runs_the_fake_for_synchronous_tests_and_their_workers() -> None:
    with PlatformsThread() as platforms, httpx.Client(base_url=platforms.base_url) as client:
        arguments = request_for("slack", "from a worker")
        assert client.post(arguments.pop("url"), **arguments).status_code == 200
        assert platforms.wait_for_texts("slack", CHAT["slack"], 1) == ["from a worker"]

        platforms.fake.throttle(1, 2)
        arguments = request_for("slack", "throttled")
        assert client.post(arguments.pop("url"), **arguments).status_code == 429

        platforms.fake.down(refuse=True)
        arguments = request_for("slack", "refused")
        with pytest.raises(httpx.ConnectError):
            client.post(arguments.pop("url"), **arguments)
        platforms.fake.up()
        arguments = request_for("slack", "back")
        assert client.post(arguments.pop("url"), **arguments).status_code == 200

        assert platforms.fake.sent_to("slack", CHAT["slack"]) == ["from a worker", "back"]
        assert platforms.fake.outcomes() == ["sent", "throttled", "sent"]


# -- inbound ---------------------------------------------------------------------------------


def test_slack_requests_verify_with_slack_sdk_and_a_tampered_body_does_not() -> None:
    payload = inbound.slack_message(
        channel="D0123ABCD", user="U0USER", text="hi", thread_ts="1700000000.000100"
    )
    request = inbound.slack_request(payload)
    verifier = SignatureVerifier(inbound.SLACK_SIGNING_SECRET)

    assert verifier.is_valid_request(request.body, request.headers)
    stamp = request.headers["X-Slack-Request-Timestamp"]
    signature = request.headers["X-Slack-Signature"]
    assert not verifier.is_valid(request.body.replace(b"hi", b"ho"), stamp, signature)
    assert not SignatureVerifier("another-secret").is_valid(request.body, stamp, signature)
    stale = inbound.slack_request(payload, timestamp=int(time.time()) - 600)
    assert not verifier.is_valid_request(stale.body, stale.headers)

    event = request.json()
    assert event["type"] == "event_callback"
    assert event["event"]["thread_ts"] == "1700000000.000100"
    assert event["event_id"] != inbound.slack_message(channel="D", user="U", text="hi")["event_id"]
    assert inbound.slack_app_mention(channel="C1", user="U1", text="yo")["event"]["text"] == (
        f"<@{inbound.SLACK_BOT_USER_ID}> yo"
    )
    assert inbound.slack_url_verification("abc")["challenge"] == "abc"


def test_twilio_requests_validate_with_the_twilio_sdk_and_a_tampered_one_does_not() -> None:
    url = "https://chat.example.test/channels/twilio/acme?x=1"
    params = inbound.twilio_message_params(from_="whatsapp:+15551230000", body="hi there")
    request = inbound.twilio_request(url, params)
    validator = RequestValidator(TWILIO_AUTH_TOKEN)
    signature = request.headers["X-Twilio-Signature"]

    assert request.url == url
    assert dict(parse_qsl(request.body.decode(), keep_blank_values=True)) == request.form
    assert validator.validate(url, request.form, signature)
    assert not validator.validate(url, {**params, "Body": "hi where"}, signature)
    assert not validator.validate(url.replace("acme", "other"), params, signature)
    assert params["WaId"] == "15551230000"

    media = inbound.twilio_media_params(from_="+15551230000")
    assert (media["NumMedia"], media["Body"]) == ("1", "")
    assert "MediaUrl0" in media and "MediaContentType0" in media
    status = inbound.twilio_status_params(message_sid="SM" + "0" * 32)
    assert status["MessageStatus"] == "delivered"


def test_whatsapp_requests_carry_the_hmac_of_their_exact_bytes() -> None:
    payload = inbound.whatsapp_text_message(from_="15551230000", text="héllo", name="Zoë")
    request = inbound.whatsapp_request(payload)
    expected = hmac.new(inbound.WHATSAPP_APP_SECRET.encode(), request.body, hashlib.sha256)

    assert request.headers["X-Hub-Signature-256"] == f"sha256={expected.hexdigest()}"
    assert b"\\u00e9" in request.body  # escaped as Meta sends it
    tampered = hmac.new(
        inbound.WHATSAPP_APP_SECRET.encode(), request.body.replace(b"llo", b"lp!"), hashlib.sha256
    )
    assert tampered.hexdigest() != expected.hexdigest()
    value = request.json()["entry"][0]["changes"][0]["value"]
    assert value["metadata"]["phone_number_id"] == WHATSAPP_PHONE_NUMBER_ID
    assert value["messages"][0]["text"] == {"body": "héllo"}
    assert value["contacts"][0] == {"profile": {"name": "Zoë"}, "wa_id": "15551230000"}

    sticker = inbound.whatsapp_media_message(from_="15551230000", kind="sticker")
    message = sticker["entry"][0]["changes"][0]["value"]["messages"][0]
    assert message["type"] == "sticker" and "text" not in message
    status = inbound.whatsapp_status(message_id="wamid.x", recipient="15551230000")
    assert status["entry"][0]["changes"][0]["value"]["statuses"][0]["status"] == "delivered"


def test_telegram_updates_carry_the_secret_token() -> None:
    request = inbound.telegram_request(inbound.telegram_text_message(chat_id=4242, text="hi"))
    bare = inbound.telegram_request(
        inbound.telegram_sticker_message(chat_id=4242), secret_token=None
    )

    assert request.headers["X-Telegram-Bot-Api-Secret-Token"] == inbound.TELEGRAM_SECRET_TOKEN
    assert "X-Telegram-Bot-Api-Secret-Token" not in bare.headers
    update = request.json()
    assert update["message"]["chat"] == {"id": 4242, "type": "private", "first_name": "Ada"}
    assert update["message"]["from"]["id"] == 4242
    assert update["message"]["text"] == "hi"
    assert "text" not in bare.json()["message"]
    assert update["update_id"] != bare.json()["update_id"]
    edited = inbound.telegram_edited_message(chat_id=4242, message_id=9, text="hi!")
    assert edited["edited_message"]["message_id"] == 9
    assert inbound.telegram_callback_query(chat_id=4242, data="yes")["callback_query"]["data"] == (
        "yes"
    )
    assert json.loads(request.body) == update
