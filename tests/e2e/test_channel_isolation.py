"""Many chats at once, on every platform, for several tenants whose bots use the same chat
ids: every reply reaches exactly the chat its message came from, once and in order, and
every model call saw that chat's conversation alone (the isolation checker, over the
channel path: real API and worker processes, the loopback model, the platforms' fake)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.apikeys import KeyRing, with_ring
from tests.conftest import isolated_settings
from tests.support.checker import Observation, check, conversation_of, message_for
from tests.support.cluster import Cluster
from tests.support.openai_server import ModelServer
from tests.support.platform_requests import (
    SLACK_SIGNING_SECRET,
    WHATSAPP_APP_SECRET,
    SignedRequest,
    text_message_request,
)
from tests.support.platforms import PlatformsThread
from tests.support.polling import eventually

CHANNELS = ("telegram", "slack", "whatsapp", "twilio")
TENANTS = ("acme", "globex", "initech")
MESSAGES = 2


@pytest.fixture(scope="module")
def model_server() -> Iterator[ModelServer]:
    with ModelServer(latency_s=0.01, conversation_of=conversation_of) as server:
        yield server


@pytest.fixture(scope="module")
def platforms() -> Iterator[PlatformsThread]:
    with PlatformsThread() as running:
        yield running


@pytest.fixture(scope="module")
def cluster(
    redis_url: str, model_server: ModelServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    with isolated_settings(redis_url) as build:
        settings = build(
            model="openai:loopback",
            openai_base_url=model_server.base_url,
            openai_api_key="test-key",
            channel_allow_private=True,
            rate_requests_per_minute=0,
        )
        logs: Path = tmp_path_factory.mktemp("channel-isolation-logs")
        with Cluster(settings, logs, workers=2, concurrency=64) as running:
            yield running


def credentials(channel: str, tenant: int) -> dict[str, str]:
    """Each tenant's bot has credentials of its own (the fake tells bots apart by them)."""
    return {
        "telegram": {"bot_token": f"{tenant + 1}000:tg", "secret_token": f"tg-secret-{tenant}"},
        "slack": {"bot_token": f"xoxb-{tenant}", "signing_secret": SLACK_SIGNING_SECRET},
        "whatsapp": {
            "access_token": f"wa-{tenant}",
            "app_secret": WHATSAPP_APP_SECRET,
            "phone_number_id": f"1065403500{tenant:05d}",
        },
        "twilio": {"account_sid": f"AC{tenant:032d}", "auth_token": f"tw-{tenant}"},
    }[channel]


def own_number(tenant: int) -> str:
    return f"+1500555{tenant:04d}"


def sender(channel: str, tenant: int) -> str:
    """How the fake names the bot that sent a message."""
    if channel == "twilio":
        return own_number(tenant)
    made = credentials(channel, tenant)
    return made["phone_number_id"] if channel == "whatsapp" else made["bot_token"]


def chat_id(channel: str, n: int) -> str:
    """The same ids for every tenant's bot: only the endpoint tells them apart."""
    return {
        "telegram": str(100 + n),
        "slack": f"D{n:06d}",
        "whatsapp": f"1555{n:07d}",
        "twilio": f"+1555{n:07d}",
    }[channel]


def inbound(channel: str, tenant: int, url: str, chat: str, text: str) -> SignedRequest:
    made = credentials(channel, tenant)
    return text_message_request(channel, chat, text, url=url, secrets_=made, to=own_number(tenant))


def run(cluster: Cluster, platforms: PlatformsThread, model: ModelServer, chats: int) -> None:
    settings = cluster.settings

    async def make_keys(ring: KeyRing) -> dict[str, str]:
        return {tenant: (await ring.create(tenant))[1] for tenant in TENANTS}

    keys = with_ring(settings.redis_url, settings.key_prefix, make_keys)
    asyncio.run(converse(cluster, platforms, model, chats, keys))


async def converse(
    cluster: Cluster,
    platforms: PlatformsThread,
    model: ModelServer,
    chats: int,
    keys: dict[str, str],
) -> None:
    fake = platforms.fake
    for t in range(len(TENANTS)):
        fake.telegram_tokens.add(credentials("telegram", t)["bot_token"])
        fake.slack_tokens.add(credentials("slack", t)["bot_token"])
        fake.whatsapp_tokens.add(credentials("whatsapp", t)["access_token"])
        made = credentials("twilio", t)
        fake.twilio_accounts[made["account_sid"]] = made["auth_token"]

    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=cluster.base_url, timeout=60, limits=limits) as http:
        endpoints: dict[tuple[str, int], dict[str, Any]] = {}
        for t, tenant in enumerate(TENANTS):
            auth = {"Authorization": f"Bearer {keys[tenant]}"}
            for channel in CHANNELS:
                base = platforms.base_url + ("/api" if channel == "slack" else "")
                answer = await http.post(
                    "/v1/channels",
                    json={"channel": channel, "credentials": credentials(channel, t),
                          "api_base": base, "strategy": "enqueue", "per_second": 200},
                    headers=auth,
                )  # fmt: skip
                assert answer.status_code == 201, answer.text
                endpoints[channel, t] = answer.json()

        sent: dict[str, list[str]] = {}  # label -> messages, in order
        where: dict[str, tuple[str, int, str]] = {}  # label -> (channel, tenant, chat)
        gate = asyncio.Semaphore(48)

        async def one_chat(channel: str, t: int, n: int) -> None:
            chat = chat_id(channel, n)
            label = f"{TENANTS[t]}/{channel}/{n}"
            where[label] = (channel, t, chat)
            sent[label] = []
            url = endpoints[channel, t]["webhook_url"]
            for k in range(MESSAGES):
                text = message_for(label, k)
                sent[label].append(text)
                request = inbound(channel, t, url, chat, text)
                async with gate:
                    answer = await deliver(http, url, request)
                assert answer.status_code == 200, answer.text

        await asyncio.gather(
            *(
                one_chat(c, t, n)
                for c in CHANNELS
                for t in range(len(TENANTS))
                for n in range(chats)
            )
        )
        expected = len(sent) * MESSAGES
        with suppress(AssertionError):  # judged below, reply by reply
            await eventually(lambda: len(fake.sent) >= expected, timeout_s=30 + 0.2 * len(sent))
        await asyncio.sleep(1.0)  # anything extra would show now

        problems: list[str] = []
        got: dict[tuple[str, str, str], list[str]] = {}
        for message in fake.sent:
            got.setdefault((message.platform, message.sender, message.chat), []).append(
                message.text
            )
        owed = {
            (channel, sender(channel, t), chat): [f"ack {text}" for text in sent[label]]
            for label, (channel, t, chat) in where.items()
        }
        for target, texts in got.items():
            if target not in owed:
                problems.append(f"replies went to {target}, which sent nothing")
            elif texts != owed[target]:
                problems.append(f"{target} got {texts}, not {owed[target]}")
        problems += [f"{target} got nothing" for target in owed if target not in got]

        histories: dict[str, list[tuple[str, str]]] = {}

        async def history(label: str) -> None:
            channel, t, chat = where[label]
            session = f"{channel}:{endpoints[channel, t]['id']}:{_plain(chat)}"
            if channel == "twilio":
                session += f":v{_plain(own_number(t))}"
            auth = {"Authorization": f"Bearer {keys[TENANTS[t]]}"}
            async with gate:
                page = await http.get(f"/v1/sessions/{session}/messages", headers=auth)
            assert page.status_code == 200, page.text
            histories[label] = [(m["type"], m["data"]["content"]) for m in page.json()["data"]]

        await asyncio.gather(*(history(label) for label in where))
        observation = Observation(
            sent=sent, prompts=[r.messages for r in model.state.prompts], histories=histories
        )
        problems += check(observation)
        assert not problems, problems[:10]
        assert len(model.state.prompts) == expected


async def deliver(http: httpx.AsyncClient, url: str, request: SignedRequest) -> httpx.Response:
    """Post as a platform does: a request that got no answer (a kept-alive connection the
    server had just closed) is sent again, the same bytes; the platform's id makes it
    one turn however often it arrives."""
    for _ in range(2):
        try:
            return await http.post(url, **request.kwargs())
        except httpx.TransportError:
            await asyncio.sleep(0.5)
    return await http.post(url, **request.kwargs())


def _plain(chat: str) -> str:
    """A chat id as it appears in its session id (characters outside A-Za-z0-9.- escaped)."""
    return "".join(
        c if c.isascii() and (c.isalnum() or c in ".-") else f"_{ord(c):02x}" for c in chat
    )


def test_many_chats_of_many_tenants_each_get_their_own_replies(
    cluster: Cluster, platforms: PlatformsThread, model_server: ModelServer
) -> None:
    run(cluster, platforms, model_server, chats=15)  # 180 chats, 360 turns


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_thousands_of_chats_of_many_tenants_each_get_their_own_replies(
    cluster: Cluster, platforms: PlatformsThread, model_server: ModelServer
) -> None:
    run(cluster, platforms, model_server, chats=250)  # 3,000 chats
