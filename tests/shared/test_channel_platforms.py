"""The four platform modules, without I/O: webhook signatures (checked against the
platforms' own SDKs where they publish one), parsing, the send calls, and how an answer
to a send is judged."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import math
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slack_sdk.signature import Clock, SignatureVerifier
from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]

from shared.channels.endpoints import ChannelEndpoint
from shared.channels.platform import (
    Answer,
    Incoming,
    Malformed,
    Message,
    Parsed,
    Refused,
    Result,
    Route,
)
from shared.channels.slack import Slack
from shared.channels.telegram import Telegram
from shared.channels.twilio import EMPTY_TWIML, Twilio
from shared.channels.whatsapp import WhatsApp
from tests.support.platform_requests import (
    SLACK_BOT_USER_ID,
    SLACK_SIGNING_SECRET,
    TELEGRAM_SECRET_TOKEN,
    WHATSAPP_APP_SECRET,
    WHATSAPP_VERIFY_TOKEN,
    SignedRequest,
    slack_app_mention,
    slack_message,
    slack_request,
    slack_url_verification,
    telegram_callback_query,
    telegram_edited_message,
    telegram_photo_message,
    telegram_request,
    telegram_sticker_message,
    telegram_text_message,
    twilio_media_params,
    twilio_message_params,
    twilio_request,
    twilio_status_params,
    whatsapp_media_message,
    whatsapp_reaction,
    whatsapp_request,
    whatsapp_status,
    whatsapp_text_message,
    whatsapp_verification_params,
)
from tests.support.platforms import (
    SLACK_BOT_TOKEN,
    TELEGRAM_TOKEN,
    TWILIO_ACCOUNT_SID,
    TWILIO_AUTH_TOKEN,
    TWILIO_SMS_NUMBER,
    TWILIO_WHATSAPP_NUMBER,
    WHATSAPP_PHONE_NUMBER_ID,
    WHATSAPP_TOKEN,
)

ENDPOINT_ID = "ch_0123456789abcdef"
TWILIO_URL = f"https://bots.example.com/v1/channels/twilio/{ENDPOINT_ID}/webhook"
CUSTOM_BASE = "http://platform-double.test:8099/"

TELEGRAM = Telegram()
SLACK = Slack()
WHATSAPP = WhatsApp()
TWILIO = Twilio()


def endpoint(
    channel: str, *, api_base: str | None = None, public_url: str | None = None
) -> ChannelEndpoint:
    credentials = {
        "telegram": {"bot_token": TELEGRAM_TOKEN, "secret_token": TELEGRAM_SECRET_TOKEN},
        "slack": {"bot_token": SLACK_BOT_TOKEN, "signing_secret": SLACK_SIGNING_SECRET},
        "whatsapp": {
            "access_token": WHATSAPP_TOKEN,
            "app_secret": WHATSAPP_APP_SECRET,
            "phone_number_id": WHATSAPP_PHONE_NUMBER_ID,
            "verify_token": WHATSAPP_VERIFY_TOKEN,
        },
        "twilio": {"account_sid": TWILIO_ACCOUNT_SID, "auth_token": TWILIO_AUTH_TOKEN},
    }[channel]
    return ChannelEndpoint.model_validate(
        {
            "id": ENDPOINT_ID,
            "tenant": "t",
            "channel": channel,
            "credentials": credentials,
            "created_at": 0,
            "api_base": api_base,
            "public_url": public_url,
        }
    )


def incoming(
    signed: SignedRequest, *, url: str | None = None, body: bytes | None = None
) -> Incoming:
    """The request as the API hands it to a platform module (header names lower case)."""
    return Incoming(
        url=url or signed.url or "https://bots.example.com/webhook",
        headers={name.lower(): value for name, value in signed.headers.items()},
        body=signed.body if body is None else body,
    )


def raw(body: bytes | str, **headers: str) -> Incoming:
    data = body.encode() if isinstance(body, str) else body
    return Incoming(url="https://bots.example.com/webhook", headers=headers, body=data)


def refused(call: Any, *args: Any, status: int = 401) -> Refused:
    with pytest.raises(Refused) as caught:
        call(*args)
    assert caught.value.status == status
    return caught.value


def retryable(result: Result) -> bool:
    """A failure worth trying again after the sender's own backoff."""
    return not result.ok and not result.permanent and result.retry_after_s is None


# -- Slack: verify ----------------------------------------------------------------------------


class FixedClock(Clock):
    def __init__(self, now: float) -> None:
        self._now = now

    def now(self) -> float:
        return self._now


SLACK_NOW = 1_700_000_000


def slack_signed(
    body: bytes, *, stamp: int = SLACK_NOW, secret: str = SLACK_SIGNING_SECRET
) -> Incoming:
    return incoming(slack_request(body, secret=secret, timestamp=stamp))


def test_slack_accepts_a_request_signed_by_slack_sdk() -> None:
    request = slack_signed(json.dumps(slack_message(channel="D1", user="U1", text="hi")).encode())
    SLACK.verify(endpoint("slack"), request, SLACK_NOW)


def test_slack_refuses_a_tampered_body() -> None:
    request = slack_signed(b'{"type":"event_callback","n":1}')
    forged = Incoming(request.url, request.headers, b'{"type":"event_callback","n":2}')
    refused(SLACK.verify, endpoint("slack"), forged, SLACK_NOW)


def test_slack_refuses_a_request_signed_with_another_secret() -> None:
    request = slack_signed(b"{}", secret="not-the-signing-secret")
    refused(SLACK.verify, endpoint("slack"), request, SLACK_NOW)


@pytest.mark.parametrize("missing", ["x-slack-signature", "x-slack-request-timestamp"])
def test_slack_refuses_a_request_without_its_signature_headers(missing: str) -> None:
    request = slack_signed(b"{}")
    headers = {k: v for k, v in request.headers.items() if k != missing}
    refused(
        SLACK.verify, endpoint("slack"), Incoming(request.url, headers, request.body), SLACK_NOW
    )


@pytest.mark.parametrize("stamp", ["", "abc", "1700000000.5", "-1700000000", " 1700000000", "1e9"])
def test_slack_refuses_a_timestamp_that_is_not_whole_seconds(stamp: str) -> None:
    body = b"{}"
    signature = SignatureVerifier(SLACK_SIGNING_SECRET).generate_signature(
        timestamp=stamp, body=body
    )
    assert signature is not None
    headers = {"x-slack-request-timestamp": stamp, "x-slack-signature": signature}
    refused(SLACK.verify, endpoint("slack"), raw(body, **headers), SLACK_NOW)


def test_slack_refuses_a_timestamp_of_superscript_digits() -> None:
    headers = {"x-slack-request-timestamp": "\u00b2", "x-slack-signature": "v0=00"}
    refused(SLACK.verify, endpoint("slack"), raw(b"{}", **headers), SLACK_NOW)


@pytest.mark.parametrize("skew", [-301, 301, -86_400, 86_400])
def test_slack_refuses_a_timestamp_more_than_five_minutes_away(skew: int) -> None:
    request = slack_signed(b"{}", stamp=SLACK_NOW + skew)
    refused(SLACK.verify, endpoint("slack"), request, SLACK_NOW)


@pytest.mark.parametrize("skew", [-300, 300, 0])
def test_slack_accepts_a_timestamp_up_to_five_minutes_away(skew: int) -> None:
    SLACK.verify(endpoint("slack"), slack_signed(b"{}", stamp=SLACK_NOW + skew), SLACK_NOW)


def test_slack_accepts_a_fractional_now_within_the_window() -> None:
    SLACK.verify(endpoint("slack"), slack_signed(b"{}", stamp=SLACK_NOW), SLACK_NOW + 299.999)
    refused(SLACK.verify, endpoint("slack"), slack_signed(b"{}"), SLACK_NOW + 300.001)


@settings(max_examples=200, deadline=None)
@given(
    body=st.text(max_size=200).map(str.encode),
    skew=st.integers(min_value=-400, max_value=400),
    forgery=st.sampled_from(["none", "body", "secret", "stamp", "garbage"]),
)
def test_slack_verify_agrees_with_slack_sdk(body: bytes, skew: int, forgery: str) -> None:
    stamp = str(SLACK_NOW + skew)
    secret = "other-secret" if forgery == "secret" else SLACK_SIGNING_SECRET
    signed_body = body + b"!" if forgery == "body" else body
    signed_stamp = str(SLACK_NOW + skew + 1) if forgery == "stamp" else stamp
    signature = SignatureVerifier(secret).generate_signature(
        timestamp=signed_stamp, body=signed_body
    )
    assert signature is not None
    if forgery == "garbage":
        signature = "v0=" + hashlib.sha256(body).hexdigest()
    sdk = SignatureVerifier(SLACK_SIGNING_SECRET, clock=FixedClock(SLACK_NOW))
    expected = sdk.is_valid(body=body, timestamp=stamp, signature=signature)
    request = raw(body, **{"x-slack-request-timestamp": stamp, "x-slack-signature": signature})
    try:
        SLACK.verify(endpoint("slack"), request, SLACK_NOW)
        ours = True
    except Refused:
        ours = False
    assert ours == expected
    assert ours == (forgery == "none" and abs(skew) <= 300)


# -- Twilio: verify ---------------------------------------------------------------------------


class MultiDict:
    """Form fields with repeated names, as ``RequestValidator`` reads a framework's."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = pairs

    def __iter__(self) -> Iterator[str]:
        return iter([name for name, _ in self.pairs])

    def __len__(self) -> int:
        return len(self.pairs)

    def getall(self, name: str) -> list[str]:
        return [value for n, value in self.pairs if n == name]


def twilio_form(
    url: str, pairs: list[tuple[str, str]], *, token: str = TWILIO_AUTH_TOKEN
) -> Incoming:
    signature = RequestValidator(token).compute_signature(url, MultiDict(pairs))
    return Incoming(
        url=url,
        headers={
            "x-twilio-signature": signature,
            "content-type": "application/x-www-form-urlencoded",
        },
        body=urlencode(pairs).encode(),
    )


def twilio_verifies(request: Incoming, *, public_url: str | None = None) -> bool:
    try:
        TWILIO.verify(endpoint("twilio", public_url=public_url), request, time.time())
    except Refused as refusal:
        status = refusal.status
    else:
        return True
    assert status == 401
    return False


def test_twilio_accepts_an_inbound_sms_signed_by_the_twilio_sdk() -> None:
    signed = twilio_request(TWILIO_URL, twilio_message_params(from_="+15551230000", body="hi"))
    assert twilio_verifies(incoming(signed))


def test_twilio_accepts_many_fields_with_repeated_names_unicode_and_empty_values() -> None:
    pairs = [
        ("Body", "héllo wörld, 你好 👋 & = + %"),
        ("From", "+15551230000"),
        ("To", TWILIO_SMS_NUMBER),
        ("MediaUrl", "https://m.example/2"),
        ("MediaUrl", "https://m.example/1"),
        ("MediaUrl", "https://m.example/3"),
        ("Empty", ""),
        ("NumMedia", "3"),
        ("Ünïcode-Näme", "välue"),
        *[(f"Field{i:02d}", str(i * 7)) for i in range(30)],
    ]
    assert twilio_verifies(twilio_form(TWILIO_URL, pairs))


def test_twilio_accepts_a_url_with_a_query_string() -> None:
    url = TWILIO_URL + "?tenant=acme&x=%2F1&empty="
    assert twilio_verifies(twilio_form(url, [("Body", "hi"), ("From", "+1555")]))


def test_twilio_refuses_a_changed_field_a_dropped_field_and_an_added_field() -> None:
    pairs = [("Body", "hi"), ("From", "+15551230000")]
    good = twilio_form(TWILIO_URL, pairs)
    for body in (
        urlencode([("Body", "hi!"), ("From", "+15551230000")]),
        urlencode([("Body", "hi")]),
        urlencode([*pairs, ("Extra", "1")]),
    ):
        forged = Incoming(good.url, good.headers, body.encode())
        assert not twilio_verifies(forged)


def test_twilio_refuses_a_signature_made_with_another_token() -> None:
    request = twilio_form(TWILIO_URL, [("Body", "hi")], token="0" * 32)
    assert not twilio_verifies(request)


def test_twilio_refuses_a_request_without_a_signature() -> None:
    request = twilio_form(TWILIO_URL, [("Body", "hi")])
    unsigned = Incoming(
        request.url, {"content-type": "application/x-www-form-urlencoded"}, request.body
    )
    assert not twilio_verifies(unsigned)


def test_twilio_refuses_a_signature_over_another_url() -> None:
    request = twilio_form("https://bots.example.com/other", [("Body", "hi")])
    assert not twilio_verifies(Incoming(TWILIO_URL, request.headers, request.body))


@pytest.mark.parametrize(
    ("signed_url", "request_url"),
    [
        ("https://bots.example.com/x", "https://bots.example.com:443/x"),
        ("https://bots.example.com:443/x", "https://bots.example.com/x"),
        ("https://bots.example.com:443/x", "https://bots.example.com:443/x"),
        ("http://bots.example.com/x?a=1", "http://bots.example.com:80/x?a=1"),
        ("http://bots.example.com:80/x?a=1", "http://bots.example.com/x?a=1"),
        ("https://bots.example.com:8443/x", "https://bots.example.com:8443/x"),
    ],
)
def test_twilio_accepts_the_url_with_or_without_its_default_port_as_twilio_does(
    signed_url: str, request_url: str
) -> None:
    pairs = [("Body", "hi"), ("From", "+15551230000")]
    signed = twilio_form(signed_url, pairs)
    validator = RequestValidator(TWILIO_AUTH_TOKEN)
    assert validator.validate(request_url, MultiDict(pairs), signed.headers["x-twilio-signature"])
    assert twilio_verifies(Incoming(request_url, signed.headers, signed.body))


@pytest.mark.parametrize(
    ("signed_url", "request_url"),
    [
        ("https://[2001:db8::1]:443/x", "https://[2001:db8::1]/x"),
        ("https://[2001:db8::1]/x", "https://[2001:db8::1]:443/x"),
        ("https://[2001:db8::1]:443/x", "https://[2001:db8::1]:443/x"),
    ],
)
def test_twilio_accepts_an_ipv6_host_with_or_without_its_default_port(
    signed_url: str, request_url: str
) -> None:
    signed = twilio_form(signed_url, [("Body", "hi")])
    assert twilio_verifies(Incoming(request_url, signed.headers, signed.body))


@pytest.mark.parametrize(
    ("signed_url", "request_url"),
    [
        ("https://bots.example.com:8443/x", "https://bots.example.com/x"),
        ("https://bots.example.com:443/x", "http://bots.example.com/x"),
        ("https://bots.example.com/x", "https://bots.example.com/x/"),
    ],
)
def test_twilio_refuses_a_signature_over_a_different_port_scheme_or_path(
    signed_url: str, request_url: str
) -> None:
    signed = twilio_form(signed_url, [("Body", "hi")])
    assert not twilio_verifies(Incoming(request_url, signed.headers, signed.body))


names = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=8)
values = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)


@settings(max_examples=150, deadline=None)
@given(
    pairs=st.lists(st.tuples(names, values), max_size=12, unique=True),
    port=st.sampled_from(["", ":443"]),
    signed_port=st.sampled_from(["", ":443"]),
    tamper=st.booleans(),
)
def test_twilio_verify_agrees_with_the_twilio_sdk(
    pairs: list[tuple[str, str]], port: str, signed_port: str, tamper: bool
) -> None:
    request_url = f"https://bots.example.com{port}/hook?q=1"
    signed = twilio_form(f"https://bots.example.com{signed_port}/hook?q=1", pairs)
    sent = [*pairs, ("Tampered-field", "1")] if tamper else pairs
    request = Incoming(request_url, signed.headers, urlencode(sent).encode())
    expected = RequestValidator(TWILIO_AUTH_TOKEN).validate(
        request_url, MultiDict(sent), signed.headers["x-twilio-signature"]
    )
    assert twilio_verifies(request) == expected == (not tamper)


def twilio_json(
    url: str, body: bytes, *, token: str = TWILIO_AUTH_TOKEN
) -> tuple[str, dict[str, str]]:
    """Twilio's signing of a JSON body: ``bodySHA256`` (the body's SHA-256, hex) joins the
    URL's query, and the signature covers that URL alone."""
    called = f"{url}{'&' if '?' in url else '?'}bodySHA256={hashlib.sha256(body).hexdigest()}"
    signature = RequestValidator(token).compute_signature(called, {})
    return called, {"x-twilio-signature": signature, "content-type": "application/json"}


def test_twilio_accepts_a_json_body_covered_by_body_sha256() -> None:
    body = json.dumps({"MessageSid": "SM1", "Body": "héllo", "n": [1, 2]}).encode()
    url, headers = twilio_json(TWILIO_URL, body)
    assert RequestValidator(TWILIO_AUTH_TOKEN).validate(
        url, body.decode(), headers["x-twilio-signature"]
    )
    assert twilio_verifies(Incoming(url, headers, body))
    url, headers = twilio_json(TWILIO_URL + "?a=1", body)
    assert twilio_verifies(Incoming(url, headers, body))


def test_twilio_refuses_a_json_body_that_changed_after_signing() -> None:
    body = json.dumps({"MessageSid": "SM1", "Body": "hi"}).encode()
    url, headers = twilio_json(TWILIO_URL, body)
    changed = body.replace(b"hi", b"ho")
    assert not RequestValidator(TWILIO_AUTH_TOKEN).validate(
        url, changed.decode(), headers["x-twilio-signature"]
    )
    assert not twilio_verifies(Incoming(url, headers, changed))


def test_twilio_refuses_a_json_body_whose_body_sha256_was_rewritten() -> None:
    """Matching the URL's digest to a new body breaks the signature over the URL."""
    body = json.dumps({"Body": "hi"}).encode()
    url, headers = twilio_json(TWILIO_URL, body)
    changed = json.dumps({"Body": "evil"}).encode()
    rewritten = url.split("?")[0] + "?bodySHA256=" + hashlib.sha256(changed).hexdigest()
    assert not twilio_verifies(Incoming(rewritten, headers, changed))


def test_twilio_checks_the_public_url_instead_of_the_url_the_request_reached() -> None:
    public = "https://public.example.com/hooks/twilio"
    internal = f"http://10.0.0.5:8000/v1/channels/twilio/{ENDPOINT_ID}/webhook"
    pairs = [("Body", "hi"), ("From", "+15551230000")]
    over_public = twilio_form(public, pairs)
    over_internal = twilio_form(internal, pairs)
    assert twilio_verifies(
        Incoming(internal, over_public.headers, over_public.body), public_url=public
    )
    assert not twilio_verifies(
        Incoming(internal, over_internal.headers, over_internal.body), public_url=public
    )
    assert twilio_verifies(Incoming(internal, over_internal.headers, over_internal.body))


def test_twilio_accepts_a_json_body_behind_a_proxy_with_public_url() -> None:
    public = "https://public.example.com/hooks/twilio"
    body = json.dumps({"MessageSid": "SM1", "Body": "hi"}).encode()
    called, headers = twilio_json(public, body)
    query = called.split("?", 1)[1]
    internal = f"http://10.0.0.5:8000/v1/channels/twilio/{ENDPOINT_ID}/webhook?{query}"
    assert twilio_verifies(Incoming(internal, headers, body), public_url=public)


# -- WhatsApp: verify and handshake -----------------------------------------------------------


def test_whatsapp_accepts_a_body_signed_with_the_app_secret() -> None:
    signed = whatsapp_request(whatsapp_text_message(from_="15551230000", text="héllo 👋"))
    WHATSAPP.verify(endpoint("whatsapp"), incoming(signed), time.time())


def test_whatsapp_signs_the_raw_bytes_not_the_parsed_json() -> None:
    payload = whatsapp_text_message(from_="15551230000", text="héllo")
    signed = whatsapp_request(payload)
    reserialized = json.dumps(payload, ensure_ascii=False).encode()
    assert reserialized != signed.body
    refused(WHATSAPP.verify, endpoint("whatsapp"), incoming(signed, body=reserialized), 0.0)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "sha256=",
        "sha256=" + "0" * 64,
        "sha1=" + hmac.new(WHATSAPP_APP_SECRET.encode(), b"{}", hashlib.sha1).hexdigest(),
        hmac.new(WHATSAPP_APP_SECRET.encode(), b"{}", hashlib.sha256).hexdigest(),
        "sha256=" + hmac.new(b"other-secret", b"{}", hashlib.sha256).hexdigest(),
    ],
)
def test_whatsapp_refuses_a_missing_or_wrong_signature(header: str | None) -> None:
    headers = {} if header is None else {"x-hub-signature-256": header}
    refused(WHATSAPP.verify, endpoint("whatsapp"), raw(b"{}", **headers), 0.0)


def test_whatsapp_refuses_a_tampered_body() -> None:
    signed = whatsapp_request(whatsapp_text_message(from_="15551230000", text="hi"))
    forged = signed.body.replace(b'"hi"', b'"ho"')
    assert forged != signed.body
    refused(WHATSAPP.verify, endpoint("whatsapp"), incoming(signed, body=forged), 0.0)


def whatsapp_handshake(query: dict[str, str]) -> Incoming:
    return Incoming(url="https://bots.example.com/webhook", headers={}, body=b"", query=query)


def test_whatsapp_handshake_echoes_the_challenge() -> None:
    query = whatsapp_verification_params(challenge="1158201444")
    answer = WHATSAPP.handshake(endpoint("whatsapp"), whatsapp_handshake(query))
    assert answer.body == b"1158201444"


@pytest.mark.parametrize(
    "query",
    [
        whatsapp_verification_params(verify_token="wrong-token"),
        whatsapp_verification_params(verify_token=""),
        {**whatsapp_verification_params(), "hub.mode": "unsubscribe"},
        {k: v for k, v in whatsapp_verification_params().items() if k != "hub.mode"},
        {k: v for k, v in whatsapp_verification_params().items() if k != "hub.verify_token"},
        {},
    ],
)
def test_whatsapp_handshake_refuses_a_wrong_token_or_mode_with_403(query: dict[str, str]) -> None:
    refused(WHATSAPP.handshake, endpoint("whatsapp"), whatsapp_handshake(query), status=403)


@pytest.mark.parametrize("channel", ["telegram", "slack", "twilio"])
def test_platforms_without_a_handshake_refuse_one_with_405(channel: str) -> None:
    ep = endpoint(channel)
    request = whatsapp_handshake(whatsapp_verification_params())
    refused(ep.platform.handshake, ep, request, status=405)


# -- Telegram: verify -------------------------------------------------------------------------


def test_telegram_accepts_the_secret_token_header() -> None:
    signed = telegram_request(telegram_text_message(chat_id=42, text="hi"))
    TELEGRAM.verify(endpoint("telegram"), incoming(signed), time.time())


@pytest.mark.parametrize(
    "secret", [None, "", "wrong", TELEGRAM_SECRET_TOKEN + "x", TELEGRAM_SECRET_TOKEN[:-1]]
)
def test_telegram_refuses_a_missing_or_wrong_secret_token(secret: str | None) -> None:
    signed = telegram_request(telegram_text_message(chat_id=42, text="hi"), secret_token=secret)
    refused(TELEGRAM.verify, endpoint("telegram"), incoming(signed), time.time())


# -- parse: Telegram --------------------------------------------------------------------------


def undated(messages: tuple[Message, ...]) -> tuple[Message, ...]:
    """The messages without their ``sent_at`` (checked on its own, below), after checking
    each one has it: Telegram, Slack and WhatsApp all date their messages."""
    assert all(m.sent_at is not None for m in messages), messages
    return tuple(dataclasses.replace(m, sent_at=None) for m in messages)


def test_each_platform_dates_its_messages_in_unix_seconds() -> None:
    when = 1_700_000_000
    update = telegram_text_message(chat_id=1, text="t")
    update["message"]["date"] = when
    telegram = TELEGRAM.parse(endpoint("telegram"), incoming(telegram_request(update)))
    payload = whatsapp_text_message(from_="1555", text="w", timestamp=when)
    whatsapp = WHATSAPP.parse(endpoint("whatsapp"), incoming(whatsapp_request(payload)))
    event = slack_message(channel="D1", user="U1", text="s")
    event["event_time"] = when
    slack = SLACK.parse(endpoint("slack"), incoming(slack_request(event)))
    assert [p.messages[0].sent_at for p in (telegram, whatsapp, slack)] == [when] * 3


def telegram_parse(update: dict[str, Any]) -> tuple[Message, ...]:
    parsed = TELEGRAM.parse(endpoint("telegram"), incoming(telegram_request(update)))
    assert parsed.answer == Answer()
    return undated(parsed.messages)


def test_telegram_parses_a_text_message() -> None:
    update = telegram_text_message(chat_id=42, text="hello there", update_id=100_200)
    assert telegram_parse(update) == (Message(chat="42", id="100200", text="hello there"),)


def test_telegram_parses_a_group_chat_with_its_negative_id() -> None:
    update = telegram_text_message(chat_id=-1001234567890, text="hi", chat_type="supergroup")
    (message,) = telegram_parse(update)
    assert message.chat == "-1001234567890" and message.thread is None


def test_telegram_parses_a_forum_topic_as_the_thread() -> None:
    update = telegram_text_message(
        chat_id=-1001234567890, text="hi", chat_type="supergroup", message_thread_id=77
    )
    (message,) = telegram_parse(update)
    assert (message.chat, message.thread, message.text) == ("-1001234567890", "77", "hi")


def test_telegram_ignores_a_reply_thread_outside_a_forum_topic() -> None:
    update = telegram_text_message(chat_id=-100555, text="hi", chat_type="supergroup")
    update["message"]["message_thread_id"] = 12  # a reply thread: no is_topic_message
    (message,) = telegram_parse(update)
    assert message.thread is None


@pytest.mark.parametrize(
    "update",
    [
        telegram_sticker_message(chat_id=42, update_id=5),
        telegram_photo_message(chat_id=42, update_id=5),
        telegram_photo_message(chat_id=42, caption="look at this", update_id=5),
    ],
)
def test_telegram_parses_media_as_a_message_with_no_text(update: dict[str, Any]) -> None:
    assert telegram_parse(update) == (Message(chat="42", id="5", text=None),)


@pytest.mark.parametrize(
    "update",
    [
        telegram_edited_message(chat_id=42, message_id=3, text="edited"),
        telegram_callback_query(chat_id=42, data="button-1"),
        {"update_id": 9, "channel_post": {"chat": {"id": -100}, "text": "post"}},
        {"update_id": 9, "my_chat_member": {"chat": {"id": 42}}},
        {"update_id": "9", "message": {"chat": {"id": 42}, "text": "no numeric update id"}},
        {"update_id": 9, "message": {"text": "no chat"}},
        {"update_id": 9, "message": {"chat": {"id": 42}, "from": {"is_bot": True}, "text": "x"}},
    ],
)
def test_telegram_drops_updates_that_are_not_a_user_message(update: dict[str, Any]) -> None:
    assert telegram_parse(update) == ()


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"", b'"text"'])
def test_telegram_refuses_a_body_that_is_not_a_json_object(body: bytes) -> None:
    with pytest.raises(Malformed):
        TELEGRAM.parse(endpoint("telegram"), raw(body))


# -- parse: Slack -----------------------------------------------------------------------------


def slack_parse(payload: dict[str, Any]) -> tuple[Message, ...]:
    parsed = SLACK.parse(endpoint("slack"), incoming(slack_request(payload)))
    assert parsed.answer == Answer()
    return undated(parsed.messages)


def test_slack_answers_url_verification_with_the_challenge() -> None:
    payload = slack_url_verification("3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P")
    parsed = SLACK.parse(endpoint("slack"), incoming(slack_request(payload)))
    assert parsed.messages == ()
    assert parsed.answer.body == b"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"


def test_slack_parses_a_direct_message() -> None:
    payload = slack_message(channel="D024BE91L", user="U2147483697", text="hello", event_id="Ev1")
    assert slack_parse(payload) == (Message(chat="D024BE91L", id="Ev1", text="hello"),)


def test_slack_parses_a_direct_message_in_a_thread_as_that_thread() -> None:
    payload = slack_message(channel="D1", user="U1", text="more", thread_ts="1700000000.000100")
    (message,) = slack_parse(payload)
    assert message.thread == "1700000000.000100"


def test_slack_parses_a_mention_without_the_mention_threaded_under_it() -> None:
    payload = slack_app_mention(
        channel="C0LAN2Q65", user="U1", text="is it everything?", ts="1700000000.000200",
        event_id="Ev2",
    )  # fmt: skip
    assert payload["event"]["text"] == f"<@{SLACK_BOT_USER_ID}> is it everything?"
    assert slack_parse(payload) == (
        Message(chat="C0LAN2Q65", id="Ev2", text="is it everything?", thread="1700000000.000200"),
    )


def test_slack_parses_a_mention_inside_a_thread_as_that_thread() -> None:
    payload = slack_app_mention(
        channel="C1", user="U1", text="and this?", ts="1700000009.000900",
        thread_ts="1700000000.000100",
    )  # fmt: skip
    (message,) = slack_parse(payload)
    assert (message.thread, message.text) == ("1700000000.000100", "and this?")


def test_slack_keeps_mentions_of_others_after_the_leading_one() -> None:
    payload = slack_app_mention(channel="C1", user="U1", text="ask <@U0OTHER1> please")
    (message,) = slack_parse(payload)
    assert message.text == "ask <@U0OTHER1> please"


def test_slack_parses_a_bare_mention_as_no_text() -> None:
    payload = slack_app_mention(channel="C1", user="U1", text="")
    (message,) = slack_parse(payload)
    assert message.text is None and message.thread is not None


def test_slack_parses_a_file_share_as_no_text() -> None:
    payload = slack_message(channel="D1", user="U1", text="see attached", subtype="file_share")
    (message,) = slack_parse(payload)
    assert message.text is None


@pytest.mark.parametrize(
    "payload",
    [
        slack_message(channel="D1", user="U1", text="mine", bot_id="B01"),
        slack_message(channel="D1", user="U1", text="legacy", subtype="bot_message"),
        slack_message(channel="D1", user="U1", text="edited", subtype="message_changed"),
        slack_message(channel="D1", user="U1", text="gone", subtype="message_deleted"),
        slack_message(channel="C1", user="U1", text="joined", subtype="channel_join"),
        slack_message(channel="C1", user="U1", text="chatter", channel_type="channel"),
        slack_message(channel="G1", user="U1", text="chatter", channel_type="group"),
        slack_message(channel="G1", user="U1", text="chatter", channel_type="mpim"),
        {"type": "event_callback", "event_id": "Ev9", "event": {"type": "reaction_added"}},
        {"type": "event_callback", "event": {"type": "message", "channel": "D1", "text": "x"}},
        {"type": "app_rate_limited", "minute_rate_limited": 1518467820},
    ],
)
def test_slack_drops_events_that_are_not_a_user_message_to_the_bot(payload: dict[str, Any]) -> None:
    assert slack_parse(payload) == ()


@pytest.mark.parametrize("body", [b"{", b"[]", b"null"])
def test_slack_refuses_a_body_that_is_not_a_json_object(body: bytes) -> None:
    with pytest.raises(Malformed):
        SLACK.parse(endpoint("slack"), raw(body))


# -- parse: WhatsApp --------------------------------------------------------------------------


def whatsapp_parse(payload: dict[str, Any]) -> tuple[Message, ...]:
    parsed = WHATSAPP.parse(endpoint("whatsapp"), incoming(whatsapp_request(payload)))
    assert parsed.answer == Answer()
    return undated(parsed.messages)


def test_whatsapp_parses_a_text_message() -> None:
    payload = whatsapp_text_message(from_="15551230000", text="hola 👋", message_id="wamid.A1")
    assert whatsapp_parse(payload) == (Message(chat="15551230000", id="wamid.A1", text="hola 👋"),)


@pytest.mark.parametrize("kind", ["image", "sticker", "audio", "video", "document"])
def test_whatsapp_parses_media_as_a_message_with_no_text(kind: Any) -> None:
    payload = whatsapp_media_message(from_="15551230000", kind=kind, caption="cap", message_id="w")
    assert whatsapp_parse(payload) == (Message(chat="15551230000", id="w", text=None),)


def test_whatsapp_parses_every_message_of_a_notification_in_order() -> None:
    payload = whatsapp_text_message(from_="111", text="one", message_id="wamid.1")
    second = whatsapp_text_message(from_="222", text="two", message_id="wamid.2")
    value = payload["entry"][0]["changes"][0]["value"]
    value["messages"] += second["entry"][0]["changes"][0]["value"]["messages"]
    payload["entry"].append(
        whatsapp_text_message(from_="333", text="three", message_id="wamid.3")["entry"][0]
    )
    assert [(m.chat, m.id, m.text) for m in whatsapp_parse(payload)] == [
        ("111", "wamid.1", "one"),
        ("222", "wamid.2", "two"),
        ("333", "wamid.3", "three"),
    ]


@pytest.mark.parametrize(
    "payload",
    [
        whatsapp_reaction(from_="15551230000", reacted_to="wamid.X"),
        whatsapp_status(message_id="wamid.X", recipient="15551230000"),
        whatsapp_status(message_id="wamid.X", recipient="15551230000", status="failed"),
        whatsapp_text_message(from_="15551230000", text="hi", phone_number_id="999999999"),
        {**whatsapp_text_message(from_="15551230000", text="hi"), "object": "page"},
        {"object": "whatsapp_business_account", "entry": []},
        {"object": "whatsapp_business_account"},
    ],
)
def test_whatsapp_drops_what_is_not_a_user_message_to_this_number(payload: dict[str, Any]) -> None:
    assert whatsapp_parse(payload) == ()


def test_whatsapp_drops_another_field_than_messages() -> None:
    payload = whatsapp_text_message(from_="15551230000", text="hi")
    payload["entry"][0]["changes"][0]["field"] = "account_update"
    assert whatsapp_parse(payload) == ()


@pytest.mark.parametrize("body", [b"<xml/>", b"[]", b"42"])
def test_whatsapp_refuses_a_body_that_is_not_a_json_object(body: bytes) -> None:
    with pytest.raises(Malformed):
        WHATSAPP.parse(endpoint("whatsapp"), raw(body))


@pytest.mark.parametrize("text", [None, "hi"])
def test_whatsapp_handles_a_text_message_whose_text_is_not_an_object(text: Any) -> None:
    payload = whatsapp_text_message(from_="15551230000", text="x", message_id="wamid.B")
    payload["entry"][0]["changes"][0]["value"]["messages"][0]["text"] = text
    try:
        messages = whatsapp_parse(payload)
    except Malformed:
        return
    assert messages == (Message(chat="15551230000", id="wamid.B", text=None),)


# -- parse: Twilio ----------------------------------------------------------------------------


def twilio_parse(params: dict[str, str]) -> tuple[tuple[Message, ...], Answer]:
    parsed = TWILIO.parse(endpoint("twilio"), incoming(twilio_request(TWILIO_URL, params)))
    return parsed.messages, parsed.answer


TWIML = Answer(EMPTY_TWIML, "text/xml")


def test_twilio_parses_an_sms_with_the_number_it_was_sent_to() -> None:
    params = twilio_message_params(from_="+15551230000", body="hi there", message_sid="SM123")
    messages, answer = twilio_parse(params)
    assert messages == (
        Message(chat="+15551230000", id="SM123", text="hi there", via=TWILIO_SMS_NUMBER),
    )
    assert answer == TWIML
    assert b"<Response></Response>" in answer.body


def test_twilio_parses_a_whatsapp_message_through_twilio() -> None:
    params = twilio_message_params(
        from_="whatsapp:+15551230000", body="hey", to=TWILIO_WHATSAPP_NUMBER
    )
    (message,), _ = twilio_parse(params)
    assert (message.chat, message.via, message.text) == (
        "whatsapp:+15551230000",
        TWILIO_WHATSAPP_NUMBER,
        "hey",
    )


def test_twilio_parses_an_mms_with_no_body_as_no_text() -> None:
    params = twilio_media_params(from_="+15551230000", message_sid="MM1")
    messages, answer = twilio_parse(params)
    assert messages == (Message(chat="+15551230000", id="MM1", text=None, via=TWILIO_SMS_NUMBER),)
    assert answer == TWIML


def test_twilio_parses_an_mms_with_a_caption_as_no_text_like_every_platform() -> None:
    params = {**twilio_media_params(from_="+15551230000", message_sid="MM2"), "Body": "look"}
    messages, _ = twilio_parse(params)
    assert [m.text for m in messages] == [None]


def test_twilio_drops_a_status_callback_with_empty_twiml() -> None:
    assert twilio_parse(twilio_status_params(message_sid="SM9")) == ((), TWIML)


def test_twilio_drops_a_status_callback_for_another_account_without_refusing() -> None:
    params = twilio_status_params(message_sid="SM9", account_sid="AC" + "f" * 32)
    assert twilio_parse(params) == ((), TWIML)


def test_twilio_refuses_a_message_for_another_account_with_403() -> None:
    params = twilio_message_params(from_="+15551230000", body="hi", account_sid="AC" + "9" * 32)
    request = incoming(twilio_request(TWILIO_URL, params))
    refused(TWILIO.parse, endpoint("twilio"), request, status=403)


@pytest.mark.parametrize("body", [b"\xff\xfe not utf-8", b"", b'{"MessageSid": "SM1"}'])
def test_twilio_answers_a_body_without_a_message_with_empty_twiml(body: bytes) -> None:
    assert TWILIO.parse(endpoint("twilio"), raw(body)) == Parsed(answer=TWIML)


# -- call -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("api_base", "base"),
    [(None, "https://api.telegram.org"), (CUSTOM_BASE, CUSTOM_BASE.rstrip("/"))],
)
def test_telegram_sends_with_the_token_in_the_path(api_base: str | None, base: str) -> None:
    call = TELEGRAM.call(endpoint("telegram", api_base=api_base), Route("-100123"), "hi")
    assert call.url == f"{base}/bot{TELEGRAM_TOKEN}/sendMessage"
    assert call.json == {"chat_id": -100123, "text": "hi"}
    assert call.form is None and "authorization" not in call.headers


def test_telegram_sends_a_numeric_chat_id_as_a_number_and_a_topic_as_its_thread() -> None:
    call = TELEGRAM.call(endpoint("telegram"), Route("42", thread="77"), "hi")
    assert call.json == {"chat_id": 42, "text": "hi", "message_thread_id": 77}
    assert type(call.json["chat_id"]) is int and type(call.json["message_thread_id"]) is int


def test_telegram_sends_a_username_chat_as_text() -> None:
    call = TELEGRAM.call(endpoint("telegram"), Route("@channelname"), "hi")
    assert call.json == {"chat_id": "@channelname", "text": "hi"}


@pytest.mark.parametrize(
    ("api_base", "base"), [(None, "https://slack.com/api"), (CUSTOM_BASE, CUSTOM_BASE.rstrip("/"))]
)
def test_slack_posts_a_message_with_the_bot_token(api_base: str | None, base: str) -> None:
    call = SLACK.call(endpoint("slack", api_base=api_base), Route("D1"), "hi")
    assert call.url == f"{base}/chat.postMessage"
    assert call.headers == {"authorization": f"Bearer {SLACK_BOT_TOKEN}"}
    assert call.json == {"channel": "D1", "text": "hi"} and call.form is None


def test_slack_answers_in_the_thread() -> None:
    call = SLACK.call(endpoint("slack"), Route("C1", thread="1700000000.000200"), "hi")
    assert call.json == {"channel": "C1", "text": "hi", "thread_ts": "1700000000.000200"}


@pytest.mark.parametrize(
    ("api_base", "base"), [(None, "https://api.twilio.com"), (CUSTOM_BASE, CUSTOM_BASE.rstrip("/"))]
)
def test_twilio_posts_a_form_with_basic_auth(api_base: str | None, base: str) -> None:
    route = Route("+15551230000", via=TWILIO_SMS_NUMBER)
    call = TWILIO.call(endpoint("twilio", api_base=api_base), route, "hi & bye")
    assert call.url == f"{base}/2010-04-01/Accounts/{TWILIO_ACCOUNT_SID}/Messages.json"
    scheme, _, credentials = call.headers["authorization"].partition(" ")
    assert scheme == "Basic"
    assert base64.b64decode(credentials).decode() == f"{TWILIO_ACCOUNT_SID}:{TWILIO_AUTH_TOKEN}"
    assert call.form == {"To": "+15551230000", "From": TWILIO_SMS_NUMBER, "Body": "hi & bye"}
    assert call.json is None


@pytest.mark.parametrize(
    ("api_base", "base"),
    [(None, "https://graph.facebook.com/v21.0"), (CUSTOM_BASE, CUSTOM_BASE.rstrip("/"))],
)
def test_whatsapp_posts_json_to_the_phone_number(api_base: str | None, base: str) -> None:
    call = WHATSAPP.call(endpoint("whatsapp", api_base=api_base), Route("15551230000"), "hi")
    assert call.url == f"{base}/{WHATSAPP_PHONE_NUMBER_ID}/messages"
    assert call.headers == {"authorization": f"Bearer {WHATSAPP_TOKEN}"}
    assert call.json == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "15551230000",
        "type": "text",
        "text": {"body": "hi", "preview_url": False},
    }
    assert call.form is None


# -- result -----------------------------------------------------------------------------------


def body(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def test_telegram_results() -> None:
    ok = TELEGRAM.result(200, {}, body({"ok": True, "result": {"message_id": 1}}))
    assert ok == Result(True)
    throttled = TELEGRAM.result(
        429,
        {},
        body({"ok": False, "error_code": 429, "description": "Too Many Requests: retry after 17",
              "parameters": {"retry_after": 17}}),
    )  # fmt: skip
    assert throttled.retry_after_s == 17.0 and not throttled.ok and not throttled.permanent
    assert "Too Many Requests" in throttled.error
    assert TELEGRAM.result(429, {"retry-after": "4"}, b"").retry_after_s == 4.0
    for status in (500, 502, 503, 504, 408):
        assert retryable(TELEGRAM.result(status, {}, b"Bad Gateway")), status
    for status, description in [
        (400, "Bad Request: chat not found"),
        (401, "Unauthorized"),
        (403, "Forbidden: bot was blocked by the user"),
    ]:
        result = TELEGRAM.result(status, {}, body({"ok": False, "description": description}))
        assert result.permanent and not result.ok and result.error == description, status


def test_telegram_judges_a_200_without_ok_as_not_sent() -> None:
    assert not TELEGRAM.result(200, {}, b"<html>proxy</html>").ok


def test_slack_results() -> None:
    assert SLACK.result(200, {}, body({"ok": True, "ts": "1.2"})) == Result(True)
    limited = SLACK.result(200, {"retry-after": "30"}, body({"ok": False, "error": "ratelimited"}))
    assert limited.retry_after_s == 30.0 and not limited.permanent
    unhinted = SLACK.result(200, {}, body({"ok": False, "error": "ratelimited"}))
    assert unhinted.retry_after_s is not None and unhinted.retry_after_s > 0
    assert SLACK.result(429, {"retry-after": "12"}, b"").retry_after_s == 12.0
    for error in ("internal_error", "fatal_error", "service_unavailable", "request_timeout"):
        result = SLACK.result(200, {}, body({"ok": False, "error": error}))
        assert retryable(result) and result.error == error, error
    for error in ("channel_not_found", "invalid_auth", "not_in_channel", "account_inactive"):
        result = SLACK.result(200, {}, body({"ok": False, "error": error}))
        assert result.permanent and result.error == error, error
    for status in (500, 503, 408):
        assert retryable(SLACK.result(status, {}, b"")), status
    for status in (400, 401, 403, 404):
        assert SLACK.result(status, {}, b"").permanent, status


def test_whatsapp_results() -> None:
    assert WHATSAPP.result(200, {}, body({"messages": [{"id": "wamid.X"}]})) == Result(True)
    assert WHATSAPP.result(429, {"retry-after": "7"}, b"").retry_after_s == 7.0
    for code in (130429, 131056, 131000, 4, 80007):
        error = {
            "error": {"message": f"(#{code}) slow down", "type": "OAuthException", "code": code}
        }
        result = WHATSAPP.result(400, {}, body(error))
        assert retryable(result) and f"#{code}" in result.error, code
    for status, code in [(400, 100), (401, 190), (403, 10), (400, 131026)]:
        error = {"error": {"message": "no", "code": code}}
        assert WHATSAPP.result(status, {}, body(error)).permanent, (status, code)
    for status in (500, 503, 408):
        assert retryable(WHATSAPP.result(status, {}, b"")), status


def test_twilio_results() -> None:
    assert TWILIO.result(201, {}, body({"sid": "SM1", "status": "queued"})) == Result(True)
    assert TWILIO.result(429, {"retry-after": "3"}, b"").retry_after_s == 3.0
    invalid = TWILIO.result(400, {}, body({"code": 21211, "message": "Invalid 'To' Phone Number"}))
    assert invalid.permanent and invalid.error == "Invalid 'To' Phone Number"
    for status in (401, 403, 404):
        assert TWILIO.result(status, {}, b"").permanent, status
    for status in (500, 503, 408):
        assert retryable(TWILIO.result(status, {}, b"")), status


@pytest.mark.parametrize("platform", [SLACK, WHATSAPP, TWILIO, TELEGRAM])
def test_a_429_without_a_usable_hint_still_waits(platform: Any) -> None:
    for headers in ({}, {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, {"retry-after": "-5"}):
        result = platform.result(429, headers, b"")
        assert not result.ok and not result.permanent
        assert result.retry_after_s is not None and result.retry_after_s > 0, headers


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_non_finite_retry_after_becomes_a_finite_wait(value: str) -> None:
    wait = SLACK.result(429, {"retry-after": value}, b"").retry_after_s
    assert wait is not None and math.isfinite(wait)
