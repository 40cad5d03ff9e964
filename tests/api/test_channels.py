"""The channel API: endpoints made, shown, changed and removed; the platforms' webhooks
verified and acknowledged, with what may not become a turn kept out (no worker runs
here, so accepted turns stay queued)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
import redis
from fastapi.testclient import TestClient

from api.main import create_app
from shared.keys import SessionKeys
from shared.settings import Settings
from tests.api.conftest import LOCAL, make_key
from tests.support.platform_requests import (
    SLACK_SIGNING_SECRET,
    WHATSAPP_APP_SECRET,
    slack_message,
    slack_request,
    slack_url_verification,
    telegram_edited_message,
    telegram_request,
    telegram_sticker_message,
    telegram_text_message,
    twilio_media_params,
    twilio_request,
    twilio_status_params,
    whatsapp_request,
    whatsapp_status,
)

CREDENTIALS: dict[str, dict[str, str]] = {
    "telegram": {"bot_token": "123456:telegram-token"},
    "slack": {"bot_token": "xoxb-slack-token", "signing_secret": SLACK_SIGNING_SECRET},
    "whatsapp": {
        "access_token": "EAAG-whatsapp-token",
        "app_secret": WHATSAPP_APP_SECRET,
        "phone_number_id": "106540352242922",
    },
    "twilio": {"account_sid": "AC" + "0" * 32, "auth_token": "twilio-auth-token"},
}


@pytest.fixture
def channel_api(make_settings: Callable[..., Settings]) -> Iterator[tuple[TestClient, Settings]]:
    settings = make_settings(channel_allow_private=True)
    with TestClient(create_app(settings), raise_server_exceptions=False, client=LOCAL) as client:
        yield client, settings


def make(api: TestClient, channel: str, **fields: Any) -> dict[str, Any]:
    body = {"channel": channel, "credentials": CREDENTIALS[channel], **fields}
    answer = api.post("/v1/channels", json=body)
    assert answer.status_code == 201, answer.text
    made: dict[str, Any] = answer.json()
    return made


def lane_length(settings: Settings, tenant: str, session: str) -> int:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        return int(client.llen(SessionKeys(settings.key_prefix, tenant, session).replies))
    finally:
        client.close()


@pytest.mark.parametrize("channel", list(CREDENTIALS))
def test_an_endpoint_shows_its_credentials_once_then_only_masked(
    channel_api: tuple[TestClient, Settings], channel: str
) -> None:
    api, _ = channel_api
    made = make(api, channel)
    assert made["webhook_url"] == f"http://testserver/v1/channels/{channel}/{made['id']}/webhook"
    for name, value in CREDENTIALS[channel].items():
        assert made["credentials"][name] == value
    generated = {"telegram": "secret_token", "whatsapp": "verify_token"}.get(channel)
    if generated:
        assert len(made["credentials"][generated]) >= 32
    shown = api.get(f"/v1/channels/{made['id']}").json()
    for name, value in made["credentials"].items():
        public = name in ("phone_number_id", "account_sid")
        assert shown["credentials"][name] == (value if public else "…" + value[-4:])
    assert [e["id"] for e in api.get("/v1/channels").json()["data"]] == [made["id"]]
    assert shown["strategy"] == "coalesce" and shown["debounce_s"] == 1.5


def test_an_endpoint_is_changed_in_place_and_removed(
    channel_api: tuple[TestClient, Settings],
) -> None:
    api, _ = channel_api
    made = make(api, "telegram", unsupported_reply="I read text only.")
    changed = api.patch(
        f"/v1/channels/{made['id']}",
        json={"debounce_s": 0.25, "credentials": {"bot_token": "999:a-rotated-token"}, "clear": [
            "unsupported_reply"]},
    )  # fmt: skip
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert body["debounce_s"] == 0.25 and body["unsupported_reply"] is None
    assert body["credentials"]["bot_token"] == "…oken"
    assert body["webhook_url"] == made["webhook_url"]
    unknown = api.patch(f"/v1/channels/{made['id']}", json={"credentials": {"nope": "x"}})
    assert unknown.status_code == 422, unknown.text
    spaced = {"credentials": {"secret_token": "not a token Telegram takes"}}
    refused = api.patch(f"/v1/channels/{made['id']}", json=spaced)
    assert refused.status_code == 422, refused.text
    assert "secret_token" in refused.text
    everything = api.patch(
        f"/v1/channels/{made['id']}",
        json={"clear": ["unsupported_reply", "failure_reply", "api_base", "public_url",
                        "per_second"]},
    )  # fmt: skip
    assert everything.status_code == 200, everything.text
    assert everything.json()["failure_reply"] is None
    assert api.delete(f"/v1/channels/{made['id']}").status_code == 204
    assert api.get(f"/v1/channels/{made['id']}").status_code == 404
    update = telegram_request(telegram_text_message(chat_id=5, text="anyone?"))
    gone = api.post(made["webhook_url"], **update.kwargs())
    assert gone.status_code == 404, gone.text
    assert api.delete(f"/v1/channels/{made['id']}").status_code == 404


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"channel": "slack", "credentials": {"bot_token": "xoxb-1"}}, "signing_secret"),
        ({"channel": "telegram", "credentials": {"bot_token": "1", "extra": "x"}}, "extra"),
        ({"channel": "telegram", "credentials": {"bot_token": ""}}, "bot_token"),
        ({"channel": "fax", "credentials": {}}, "channel"),
        ({"channel": "telegram", "credentials": {"bot_token": "1"}, "debounce_s": 61}, "debounce"),
    ],
)
def test_an_incomplete_or_unknown_endpoint_is_refused_with_a_problem(
    channel_api: tuple[TestClient, Settings], body: dict[str, Any], why: str
) -> None:
    api, _ = channel_api
    answer = api.post("/v1/channels", json=body)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert why in answer.text
    assert api.get("/v1/channels").json()["data"] == []


def test_a_private_api_base_is_refused_unless_allowed(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    with TestClient(create_app(settings), raise_server_exceptions=False, client=LOCAL) as api:
        answer = api.post(
            "/v1/channels",
            json={"channel": "telegram", "credentials": {"bot_token": "1"},
                  "api_base": "http://127.0.0.1:9"},
        )  # fmt: skip
        assert answer.status_code == 422, answer.text
        assert answer.json()["type"].endswith("channel-url-refused")


def test_a_tenant_sees_and_removes_only_its_own_endpoints(
    channel_api: tuple[TestClient, Settings],
) -> None:
    api, settings = channel_api
    acme = {"Authorization": f"Bearer {make_key(settings, 'acme')}"}
    globex = {"Authorization": f"Bearer {make_key(settings, 'globex')}"}
    made = api.post(
        "/v1/channels", json={"channel": "telegram", "credentials": {"bot_token": "1"}},
        headers=acme,
    ).json()  # fmt: skip
    assert api.get(f"/v1/channels/{made['id']}", headers=globex).status_code == 404
    assert api.delete(f"/v1/channels/{made['id']}", headers=globex).status_code == 404
    assert api.get("/v1/channels", headers=globex).json()["data"] == []
    assert api.get(f"/v1/channels/{made['id']}", headers=acme).status_code == 200


def test_a_webhook_is_found_only_under_its_own_channel(
    channel_api: tuple[TestClient, Settings],
) -> None:
    api, _ = channel_api
    made = make(api, "telegram")
    update = telegram_request(
        telegram_text_message(chat_id=1, text="hi"),
        secret_token=made["credentials"]["secret_token"],
    )
    wrong = api.post(f"/v1/channels/slack/{made['id']}/webhook", **update.kwargs())
    assert wrong.status_code == 404, wrong.text
    unknown = api.post("/v1/channels/telegram/ch_0000000000000000/webhook", **update.kwargs())
    assert unknown.status_code == 404, unknown.text


def test_a_redelivered_telegram_update_is_one_turn_that_knows_its_chat(
    channel_api: tuple[TestClient, Settings],
) -> None:
    api, _ = channel_api
    made = make(api, "telegram", credentials={"bot_token": "1", "secret_token": "s3cret"})
    update = telegram_text_message(chat_id=-100123, text="hello", message_thread_id=7)
    update["message"]["is_topic_message"] = True
    for _ in range(3):
        answer = api.post(
            made["webhook_url"], **telegram_request(update, secret_token="s3cret").kwargs()
        )
        assert answer.status_code == 200, answer.text
    session = f"telegram:{made['id']}:-100123:t7"
    turns = api.get(f"/v1/sessions/{session}/turns").json()["data"]
    assert len(turns) == 1
    assert turns[0]["channel"] == {
        "endpoint_id": made["id"],
        "chat": "-100123",
        "thread": "7",
        "via": None,
        "message": str(update["update_id"]),
    }
    assert turns[0]["strategy"] == "coalesce"
    metrics = api.get("/metrics").text
    assert 'chatlane_channel_messages_total{channel="telegram",outcome="accepted"} 1.0' in metrics
    assert (
        'chatlane_channel_messages_total{channel="telegram",outcome="redelivered"} 2.0' in metrics
    )


def test_slack_url_verification_is_answered_with_its_challenge(
    channel_api: tuple[TestClient, Settings],
) -> None:
    api, _ = channel_api
    made = make(api, "slack")
    challenge = slack_url_verification("3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P")
    answer = api.post(made["webhook_url"], **slack_request(challenge).kwargs())
    assert answer.status_code == 200, answer.text
    assert answer.text == "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"


def test_the_whatsapp_subscription_handshake_needs_the_verify_token(
    channel_api: tuple[TestClient, Settings],
) -> None:
    api, _ = channel_api
    made = make(api, "whatsapp")
    token = made["credentials"]["verify_token"]
    query = {"hub.mode": "subscribe", "hub.verify_token": token, "hub.challenge": "1158201444"}
    good = api.get(made["webhook_url"] + "?" + urlencode(query))
    assert good.status_code == 200 and good.text == "1158201444"
    bad = api.get(made["webhook_url"] + "?" + urlencode({**query, "hub.verify_token": "guess"}))
    assert bad.status_code == 403, bad.text
    telegram = make(api, "telegram")
    assert api.get(telegram["webhook_url"]).status_code == 405


def test_what_cannot_become_a_turn_is_acknowledged_and_answered_once_if_asked(
    channel_api: tuple[TestClient, Settings],
) -> None:
    api, settings = channel_api
    quiet = make(api, "telegram", credentials={"bot_token": "1", "secret_token": "quiet"})
    polite = make(
        api, "telegram", credentials={"bot_token": "2", "secret_token": "polite"},
        unsupported_reply="I can only read text.",
    )  # fmt: skip
    sticker = telegram_sticker_message(chat_id=42)
    for endpoint, secret in ((quiet, "quiet"), (polite, "polite")):
        for _ in range(2):  # redelivered
            answer = api.post(
                endpoint["webhook_url"], **telegram_request(sticker, secret_token=secret).kwargs()
            )
            assert answer.status_code == 200, answer.text
    tenant = settings.default_tenant
    assert lane_length(settings, tenant, f"telegram:{quiet['id']}:42") == 0
    assert lane_length(settings, tenant, f"telegram:{polite['id']}:42") == 1
    for endpoint, secret in ((quiet, "quiet"), (polite, "polite")):
        edited = telegram_edited_message(chat_id=42, message_id=1, text="edited")
        answer = api.post(
            endpoint["webhook_url"], **telegram_request(edited, secret_token=secret).kwargs()
        )
        assert answer.status_code == 200
        session = api.get(f"/v1/sessions/telegram:{endpoint['id']}:42")
        assert session.status_code == 404  # no turn, no session


def test_status_callbacks_and_media_from_twilio_and_whatsapp_make_no_turn(
    channel_api: tuple[TestClient, Settings],
) -> None:
    api, _ = channel_api
    twilio = make(api, "twilio")
    token = CREDENTIALS["twilio"]["auth_token"]
    sid = CREDENTIALS["twilio"]["account_sid"]
    for params in (
        twilio_status_params(message_sid="SM" + "1" * 32, account_sid=sid),
        twilio_media_params(from_="+15550001111", account_sid=sid),
    ):
        signed = twilio_request(twilio["webhook_url"], params, auth_token=token)
        answer = api.post(twilio["webhook_url"], **signed.kwargs())
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"].startswith("text/xml")
        assert "<Response>" in answer.text
    whatsapp = make(api, "whatsapp")
    status = whatsapp_status(
        message_id="wamid.X", recipient="15550001111",
        phone_number_id=CREDENTIALS["whatsapp"]["phone_number_id"],
    )  # fmt: skip
    answer = api.post(whatsapp["webhook_url"], **whatsapp_request(status).kwargs())
    assert answer.status_code == 200, answer.text
    bot_said = slack_message(channel="D1", user="U1", text="me", bot_id="B1")
    slack = make(api, "slack")
    assert api.post(slack["webhook_url"], **slack_request(bot_said).kwargs()).status_code == 200
    for endpoint, chat in ((twilio, "_2b15550001111:v_2b15005550006"),
                           (whatsapp, "15550001111"), (slack, "D1")):  # fmt: skip
        found = api.get(f"/v1/sessions/{endpoint['channel']}:{endpoint['id']}:{chat}")
        assert found.status_code == 404, found.text


def test_a_form_body_is_taken_only_at_a_channel_webhook(
    channel_api: tuple[TestClient, Settings],
) -> None:
    api, _ = channel_api
    form = {"content-type": "application/x-www-form-urlencoded"}
    refused = api.post("/v1/sessions/s/turns", content=b"content=hi", headers=form)
    assert refused.status_code == 415, refused.text
    twilio = make(api, "twilio")
    unsigned = api.post(twilio["webhook_url"], content=b"Body=hi&From=%2B1", headers=form)
    assert unsigned.status_code == 401, unsigned.text


def test_a_verified_body_that_is_not_the_platforms_is_a_400(
    channel_api: tuple[TestClient, Settings],
) -> None:
    api, _ = channel_api
    made = make(api, "telegram", credentials={"bot_token": "1", "secret_token": "tok"})
    answer = api.post(
        made["webhook_url"], content=b"[1, 2]",
        headers={"content-type": "application/json", "x-telegram-bot-api-secret-token": "tok"},
    )  # fmt: skip
    assert answer.status_code == 400, answer.text
    assert answer.json()["type"].endswith("malformed-payload")


def test_a_message_sent_longer_ago_than_ids_are_remembered_is_dropped_as_stale(
    channel_api: tuple[TestClient, Settings],
) -> None:
    """Its id may have been forgotten with its session: it could be a replay, so it is
    acknowledged (no redelivery) and makes no turn; a recent one still does."""
    api, settings = channel_api
    made = make(api, "telegram", credentials={"bot_token": "1", "secret_token": "tok"})
    old = telegram_text_message(chat_id=77, text="from long ago")
    old["message"]["date"] = int(time.time()) - settings.session_ttl_s
    answer = api.post(made["webhook_url"], **telegram_request(old, secret_token="tok").kwargs())
    assert answer.status_code == 200, answer.text
    assert api.get(f"/v1/sessions/telegram:{made['id']}:77").status_code == 404
    assert 'outcome="stale"} 1.0' in api.get("/metrics").text
    recent = telegram_text_message(chat_id=77, text="just now")
    answer = api.post(made["webhook_url"], **telegram_request(recent, secret_token="tok").kwargs())
    assert answer.status_code == 200
    assert api.get(f"/v1/sessions/telegram:{made['id']}:77").status_code == 200


def test_a_chat_message_that_interrupts_another_announces_its_cancellation(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(channel_allow_private=True, webhook_allow_private=True)
    with TestClient(create_app(settings), raise_server_exceptions=False, client=LOCAL) as api:
        _interrupt_announced(api, settings)


def _interrupt_announced(api: TestClient, settings: Settings) -> None:
    hook = api.post(
        "/v1/webhooks/endpoints",
        json={"url": "http://127.0.0.1:9/hook", "events": ["turn.cancelled"]},
    )
    assert hook.status_code == 201, hook.text
    made = make(api, "telegram", credentials={"bot_token": "1", "secret_token": "s3cret"},
                strategy="interrupt")  # fmt: skip
    for text in ("first", "second"):
        update = telegram_text_message(chat_id=42, text=text)
        answer = api.post(
            made["webhook_url"], **telegram_request(update, secret_token="s3cret").kwargs()
        )
        assert answer.status_code == 200, answer.text
    session = f"telegram:{made['id']}:42"
    first = api.get(f"/v1/sessions/{session}/turns").json()["data"][0]
    assert first["status"] == "cancelled" and first["cancellation"]["reason"] == "interrupted"
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        outbox = client.lrange(SessionKeys(settings.key_prefix, "default", session).outbox, 0, -1)
    finally:
        client.close()
    assert any('"turn.cancelled"' in m and first["id"] in m for m in outbox), outbox
