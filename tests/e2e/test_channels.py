"""Messaging channels end to end: a real API process verifies and accepts each
platform's webhooks, real worker processes run the turns and send the replies through
the platform's API, here a loopback fake of all four that records every call."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.channels.platform import REPLY_ID_HEADER
from tests.conftest import isolated_settings
from tests.support.cluster import Cluster
from tests.support.platform_requests import (
    SLACK_SIGNING_SECRET,
    TELEGRAM_SECRET_TOKEN,
    WHATSAPP_APP_SECRET,
    SignedRequest,
    slack_message,
    slack_request,
    text_message_request,
)
from tests.support.platforms import (
    SLACK_BOT_TOKEN,
    TELEGRAM_TOKEN,
    TWILIO_ACCOUNT_SID,
    TWILIO_AUTH_TOKEN,
    TWILIO_SMS_NUMBER,
    WHATSAPP_PHONE_NUMBER_ID,
    WHATSAPP_TOKEN,
    PlatformsThread,
)
from tests.support.polling import eventually
from tests.support.receiver import Receiver

CHANNELS = ("telegram", "slack", "whatsapp", "twilio")


@pytest.fixture(scope="module")
def platforms() -> Iterator[PlatformsThread]:
    with PlatformsThread() as running:
        yield running


@pytest.fixture(scope="module")
def cluster(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with isolated_settings(redis_url) as build:
        settings = build(
            channel_allow_private=True,
            webhook_allow_private=True,
            channel_backoff_s=0.2,
            channel_max_backoff_s=1.0,
        )
        logs: Path = tmp_path_factory.mktemp("channel-logs")
        with Cluster(settings, logs, workers=2, concurrency=32) as running:
            yield running


@dataclass
class Bot:
    """One channel endpoint, and how its platform would talk to chatlane."""

    channel: str
    endpoint: dict[str, Any]
    webhook_url: str
    counter: int = 0

    def chat(self, n: int) -> str:
        """A chat id as the platform names it (and as its send API records it)."""
        return {
            "telegram": str(700_000_000 + n),
            "slack": f"D{n:08d}",
            "whatsapp": f"1555{n:07d}",
            "twilio": f"+1555{n:07d}",
        }[self.channel]

    def inbound(self, chat: str, text: str, message_id: str | None = None) -> SignedRequest:
        """The platform's webhook request for one text message (``message_id``: the
        platform's id, to imitate a redelivery)."""
        return text_message_request(
            self.channel, chat, text, url=self.webhook_url, message_id=message_id
        )


def credentials(channel: str) -> dict[str, str]:
    return {
        "telegram": {"bot_token": TELEGRAM_TOKEN, "secret_token": TELEGRAM_SECRET_TOKEN},
        "slack": {"bot_token": SLACK_BOT_TOKEN, "signing_secret": SLACK_SIGNING_SECRET},
        "whatsapp": {
            "access_token": WHATSAPP_TOKEN,
            "app_secret": WHATSAPP_APP_SECRET,
            "phone_number_id": WHATSAPP_PHONE_NUMBER_ID,
        },
        "twilio": {"account_sid": TWILIO_ACCOUNT_SID, "auth_token": TWILIO_AUTH_TOKEN},
    }[channel]


def api_base(channel: str, fake_url: str) -> str:
    return fake_url + "/api" if channel == "slack" else fake_url


async def connect(http: httpx.AsyncClient, channel: str, fake_url: str, **settings: Any) -> Bot:
    answer = await http.post(
        "/v1/channels",
        json={
            "channel": channel,
            "credentials": credentials(channel),
            "api_base": api_base(channel, fake_url),
            **settings,
        },
    )
    assert answer.status_code == 201, answer.text
    endpoint = answer.json()
    return Bot(channel, endpoint, endpoint["webhook_url"])


async def deliver(http: httpx.AsyncClient, bot: Bot, request: SignedRequest) -> httpx.Response:
    return await http.post(bot.webhook_url, **request.kwargs())


async def texts_when(
    platforms: PlatformsThread, channel: str, chat: str, count: int, timeout_s: float = 30
) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = platforms.fake.sent_to(channel, chat)  # type: ignore[arg-type]
        if len(found) >= count:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"{chat} got {platforms.fake.sent_to(channel, chat)}")  # type: ignore[arg-type]


def session_of(bot: Bot, chat: str) -> str:
    """The session chatlane keeps for one chat of a bot (a Twilio one: per own number)."""
    own = f":v{_plain(TWILIO_SMS_NUMBER)}" if bot.channel == "twilio" else ""
    return f"{bot.channel}:{bot.endpoint['id']}:{_plain(chat)}{own}"


def _plain(chat: str) -> str:
    return "".join(c if c.isalnum() or c in ".-" else f"_{ord(c):02x}" for c in chat)


async def test_a_message_comes_back_as_a_reply_in_the_same_chat(
    cluster: Cluster, platforms: PlatformsThread
) -> None:
    async def one(http: httpx.AsyncClient, channel: str) -> list[str]:
        bot = await connect(http, channel, platforms.base_url, debounce_s=0)
        chat = bot.chat(1)
        answer = await deliver(http, bot, bot.inbound(chat, "hello there"))
        assert answer.status_code == 200, answer.text
        replies = await texts_when(platforms, channel, chat, 1)
        assert replies == ["echo: hello there (saw 0 earlier messages)"], channel
        session = (await http.get(f"/v1/sessions/{session_of(bot, chat)}/messages")).json()
        assert [m["data"]["content"] for m in session["data"]] == ["hello there", replies[0]]
        await asyncio.sleep(1.2)  # nothing more comes (a second send would be paced 1 s)
        return platforms.fake.sent_to(channel, chat)  # type: ignore[arg-type]

    await every_channel(cluster, one, [["echo: hello there (saw 0 earlier messages)"]] * 4)


async def every_channel(
    cluster: Cluster,
    one: Callable[[httpx.AsyncClient, str], Awaitable[Any]],
    expected: list[Any] | None = None,
) -> None:
    """``one`` for each platform at once (each with a bot of its own); ``expected``: what
    each answers, in ``CHANNELS`` order."""
    async with httpx.AsyncClient(base_url=cluster.base_url, timeout=30) as http:
        found = await asyncio.gather(*(one(http, channel) for channel in CHANNELS))
    if expected is not None:
        assert dict(zip(CHANNELS, found, strict=True)) == dict(zip(CHANNELS, expected, strict=True))


@pytest.mark.parametrize("channel", CHANNELS)
async def test_a_forged_signature_is_refused_and_writes_nothing(
    cluster: Cluster, platforms: PlatformsThread, channel: str
) -> None:
    async with httpx.AsyncClient(base_url=cluster.base_url, timeout=30) as http:
        bot = await connect(http, channel, platforms.base_url)
        chat = bot.chat(2)
        genuine = bot.inbound(chat, "let me in")
        forged_headers = {
            k: (v[:-4] + ("AAAA" if not v.endswith("AAAA") else "BBBB"))
            if k.lower() in SIGNATURE_HEADERS
            else v
            for k, v in genuine.headers.items()
        }
        forged = await http.post(bot.webhook_url, content=genuine.body, headers=forged_headers)
        assert forged.status_code == 401, forged.text
        assert forged.headers["content-type"] == "application/problem+json"
        if channel != "telegram":  # Telegram signs nothing: its secret proves the sender
            tampered = await http.post(
                bot.webhook_url, content=genuine.body.replace(b"let", b"LET"),
                headers=genuine.headers,
            )  # fmt: skip
            assert tampered.status_code == 401, tampered.text
        unsigned = {k: v for k, v in genuine.headers.items() if k.lower() not in SIGNATURE_HEADERS}
        bare = await http.post(bot.webhook_url, content=genuine.body, headers=unsigned)
        assert bare.status_code == 401, bare.text
        missing = await http.get(f"/v1/sessions/{session_of(bot, chat)}")
        assert missing.status_code == 404, missing.text


SIGNATURE_HEADERS = {
    "x-telegram-bot-api-secret-token",
    "x-slack-signature",
    "x-hub-signature-256",
    "x-twilio-signature",
}


async def test_a_slack_request_signed_long_ago_is_refused_as_a_replay(
    cluster: Cluster, platforms: PlatformsThread
) -> None:
    async with httpx.AsyncClient(base_url=cluster.base_url, timeout=30) as http:
        bot = await connect(http, "slack", platforms.base_url)
        event = slack_message(channel=bot.chat(3), user="U0000USER1", text="old news")
        stale = slack_request(event, timestamp=int(time.time()) - 6 * 60)
        answer = await deliver(http, bot, stale)
        assert answer.status_code == 401, answer.text
        assert "five minutes" in answer.json()["detail"]
        fresh = await deliver(http, bot, slack_request(event))
        assert fresh.status_code == 200


async def test_redelivered_messages_become_one_turn_each_in_order(
    cluster: Cluster, platforms: PlatformsThread
) -> None:
    async def one(http: httpx.AsyncClient, channel: str) -> list[str]:
        bot = await connect(http, channel, platforms.base_url, strategy="enqueue")
        chat = bot.chat(4)
        ids = [str(90_000 + n) if channel == "telegram" else f"m{channel}{n}x" for n in range(3)]
        requests = [bot.inbound(chat, f"number {n}", ids[n]) for n in range(3)]
        for n in (0, 1, 0, 2, 1, 2, 0):  # the same updates again, and out of order
            answer = await deliver(http, bot, requests[n])
            assert answer.status_code == 200, answer.text
        await texts_when(platforms, channel, chat, 3)
        turns = (await http.get(f"/v1/sessions/{session_of(bot, chat)}/turns")).json()
        assert [t["input"]["content"] for t in turns["data"]] == [f"number {n}" for n in range(3)]
        assert [t["channel"]["message"] for t in turns["data"]] == ids
        await asyncio.sleep(1.2)
        return platforms.fake.sent_to(channel, chat)  # type: ignore[arg-type]

    replies = [f"echo: number {n} (saw {2 * n} earlier messages)" for n in range(3)]
    await every_channel(cluster, one, [replies] * 4)


async def test_a_burst_of_messages_gets_one_reply(
    cluster: Cluster, platforms: PlatformsThread
) -> None:
    async def one(http: httpx.AsyncClient, channel: str) -> list[str]:
        bot = await connect(http, channel, platforms.base_url, debounce_s=1.0)
        chat = bot.chat(5)
        for n in range(4):
            answer = await deliver(http, bot, bot.inbound(chat, f"part {n}"))
            assert answer.status_code == 200, answer.text
        await texts_when(platforms, channel, chat, 1)
        await asyncio.sleep(1.5)
        turns = (await http.get(f"/v1/sessions/{session_of(bot, chat)}/turns")).json()["data"]
        assert [t["status"] for t in turns] == ["completed"] * 4
        assert {t["answered_by"] or t["id"] for t in turns} == {turns[0]["id"]}
        return platforms.fake.sent_to(channel, chat)  # type: ignore[arg-type]

    await every_channel(cluster, one, [["echo: part 3 (saw 3 earlier messages)"]] * 4)


async def test_replies_survive_the_send_api_going_down_and_throttling(
    cluster: Cluster, platforms: PlatformsThread
) -> None:
    fake = platforms.fake
    texts = [f"echo: while down {n} (saw {2 * n} earlier messages)" for n in range(3)]
    chats: dict[str, str] = {}
    done: list[str] = []
    all_committed, restored = asyncio.Event(), asyncio.Event()

    async def one(http: httpx.AsyncClient, channel: str) -> list[str]:
        bot = await connect(http, channel, platforms.base_url, strategy="enqueue")
        chat = chats[channel] = bot.chat(6)
        for n in range(3):
            answer = await deliver(http, bot, bot.inbound(chat, f"while down {n}"))
            assert answer.status_code == 200, answer.text
        await _until(
            http,
            session_of(bot, chat),
            lambda turns: all(t["status"] == "completed" for t in turns) and len(turns) == 3,
        )
        done.append(channel)
        if len(done) == len(CHANNELS):
            all_committed.set()
        await restored.wait()
        await texts_when(platforms, channel, chat, 3)
        await asyncio.sleep(1.2)
        return fake.sent_to(channel, chat)  # type: ignore[arg-type]

    async def outage() -> None:
        await all_committed.wait()  # every platform down while its three turns commit
        await asyncio.sleep(1.0)  # a few failed attempts each
        assert all(fake.sent_to(c, chat) == [] for c, chat in chats.items())  # type: ignore[arg-type]
        fake.up()
        for channel in CHANNELS:
            fake.throttle(2, 1, platform=channel)  # type: ignore[arg-type]
        restored.set()

    first_attempt, first_sent = len(fake.attempts), len(fake.sent)
    fake.down()
    try:
        await asyncio.gather(every_channel(cluster, one, [texts] * 4), outage())
    finally:
        fake.up()
    outcomes = {a.platform: set() for a in fake.attempts}
    for attempt in fake.attempts:
        outcomes[attempt.platform].add(attempt.outcome)
    assert all({"down", "throttled"} <= outcomes[c] for c in CHANNELS), outcomes
    # Every try of a reply named it, the same on each: a resend is not a second reply.
    sent_ids = {s.reply_id for s in fake.sent[first_sent:]}
    tried_ids = {a.headers.get(REPLY_ID_HEADER) for a in fake.attempts[first_attempt:]}
    assert len(sent_ids) == 3 * len(CHANNELS) and "" not in sent_ids
    assert tried_ids == sent_ids


async def _until(
    http: httpx.AsyncClient,
    session: str,
    done: Callable[[list[dict[str, Any]]], bool],
    timeout_s: float = 30,
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    turns: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        turns = (await http.get(f"/v1/sessions/{session}/turns")).json().get("data", [])
        if done(turns):
            return turns
        await asyncio.sleep(0.1)
    raise AssertionError(turns)


async def test_a_reply_the_platform_refuses_is_a_dead_letter_that_can_be_replayed(
    cluster: Cluster, platforms: PlatformsThread
) -> None:
    async with httpx.AsyncClient(base_url=cluster.base_url, timeout=30) as http:
        bot = await connect(http, "telegram", platforms.base_url, debounce_s=0)
        endpoint_id = bot.endpoint["id"]
        revoked = await http.patch(
            f"/v1/channels/{endpoint_id}", json={"credentials": {"bot_token": "0:revoked"}}
        )
        assert revoked.status_code == 200, revoked.text
        await asyncio.sleep(2.1)  # every process's cached copy of the endpoint is stale now
        chat = bot.chat(7)
        answer = await deliver(http, bot, bot.inbound(chat, "are you there"))
        assert answer.status_code == 200, answer.text
        dead: list[dict[str, Any]] = []
        deadline = time.monotonic() + 30
        while not dead and time.monotonic() < deadline:
            page = (await http.get("/v1/channels/dead-letters")).json()
            dead = [d for d in page["data"] if d["chat"] == chat]
            await asyncio.sleep(0.1)
        assert len(dead) == 1, dead
        assert dead[0]["text"] == "echo: are you there (saw 0 earlier messages)"
        assert dead[0]["attempts"] == 0 and "Unauthorized" in dead[0]["last_error"]
        fixed = await http.patch(
            f"/v1/channels/{endpoint_id}", json={"credentials": {"bot_token": TELEGRAM_TOKEN}}
        )
        assert fixed.status_code == 200
        await asyncio.sleep(2.1)
        replayed = await http.post(f"/v1/channels/dead-letters/{dead[0]['id']}/replay")
        assert replayed.status_code == 202, replayed.text
        assert await texts_when(platforms, "telegram", chat, 1) == [dead[0]["text"]]
        again = await http.post(f"/v1/channels/dead-letters/{dead[0]['id']}/replay")
        assert again.status_code == 404


async def test_a_reply_longer_than_the_platform_takes_arrives_in_parts_in_order(
    cluster: Cluster, platforms: PlatformsThread
) -> None:
    words = [f"w{n:04d}" for n in range(400)]  # 2,000 characters: two SMS-sized parts
    async with httpx.AsyncClient(base_url=cluster.base_url, timeout=30) as http:
        bot = await connect(http, "twilio", platforms.base_url, debounce_s=0)
        chat = bot.chat(8)
        answer = await deliver(http, bot, bot.inbound(chat, " ".join(words)))
        assert answer.status_code == 200, answer.text
        parts = await texts_when(platforms, "twilio", chat, 2)
        await asyncio.sleep(1.5)
        assert platforms.fake.sent_to("twilio", chat) == parts  # type: ignore[arg-type]
        assert len(parts) == 2 and all(len(p) <= 1600 for p in parts)
        first, second = [m.at for m in platforms.fake.sent if m.chat == chat]
        assert second - first >= 0.9  # one message a second to one chat
        assert " ".join(parts) == f"echo: {' '.join(words)} (saw 0 earlier messages)"


async def test_a_cancelled_message_gets_no_reply(
    cluster: Cluster, platforms: PlatformsThread
) -> None:
    receiver = await Receiver().start()  # the tenant hears of the cancel: an outbox message
    try:
        async with httpx.AsyncClient(base_url=cluster.base_url, timeout=30) as http:
            hook = await http.post(
                "/v1/webhooks/endpoints", json={"url": receiver.url, "events": ["turn.cancelled"]}
            )
            assert hook.status_code == 201, hook.text
            await asyncio.sleep(2.1)  # every process now knows of the endpoint
            bot = await connect(http, "whatsapp", platforms.base_url, debounce_s=3)
            chat = bot.chat(9)
            answer = await deliver(http, bot, bot.inbound(chat, "never mind"))
            assert answer.status_code == 200, answer.text
            session = session_of(bot, chat)
            turns = await _until(http, session, lambda turns: len(turns) == 1)
            cancelled = await http.post(f"/v1/sessions/{session}/turns/{turns[0]['id']}/cancel")
            assert cancelled.status_code == 200, cancelled.text
            await eventually(lambda: bool(receiver.received), timeout_s=15)  # announced
            await asyncio.sleep(1.5)
            assert platforms.fake.sent_to("whatsapp", chat) == []
            await http.delete(f"/v1/webhooks/endpoints/{hook.json()['id']}")
    finally:
        await receiver.stop()


async def test_a_platform_name_that_does_not_resolve_for_a_while_is_tried_again(
    cluster: Cluster, platforms: PlatformsThread
) -> None:
    """A DNS failure may pass: the reply is retried, not buried as a refused address."""
    async with httpx.AsyncClient(base_url=cluster.base_url, timeout=30) as http:
        bot = await connect(http, "slack", platforms.base_url, debounce_s=0)
        endpoint_id = bot.endpoint["id"]
        unresolved = {"api_base": "http://chatlane-test.invalid/api"}
        assert (await http.patch(f"/v1/channels/{endpoint_id}", json=unresolved)).is_success
        await asyncio.sleep(2.1)  # every process's cached copy of the endpoint is stale now
        chat = bot.chat(10)
        answer = await deliver(http, bot, bot.inbound(chat, "is DNS up"))
        assert answer.status_code == 200, answer.text
        await asyncio.sleep(2.0)  # a few attempts fail to resolve
        assert platforms.fake.sent_to("slack", chat) == []
        restored = {"api_base": api_base("slack", platforms.base_url)}
        assert (await http.patch(f"/v1/channels/{endpoint_id}", json=restored)).is_success
        assert await texts_when(platforms, "slack", chat, 1) == [
            "echo: is DNS up (saw 0 earlier messages)"
        ]
        dead = (await http.get("/v1/channels/dead-letters")).json()["data"]
        assert [d for d in dead if d["chat"] == chat] == []
