"""Channel endpoints: the session each chat maps to, what the API shows of their
credentials, and the directory that keeps them in Redis."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.channels.endpoints import ChannelEndpoint, Directory, new_endpoint_id
from shared.channels.platform import CHANNELS
from shared.keys import SESSION_ID_MAX, is_valid_session_id
from shared.store import SessionStore

ENDPOINT_ID = "ch_0123456789abcdef"

CREDENTIALS: dict[str, dict[str, str]] = {
    "telegram": {"bot_token": "123456:telegram-bot-token", "secret_token": "tg-secret-0001"},
    "slack": {"bot_token": "xoxb-slack-bot-token", "signing_secret": "slack-signing-0002"},
    "whatsapp": {
        "access_token": "EAA-whatsapp-access-0003",
        "app_secret": "whatsapp-app-secret-0004",
        "phone_number_id": "106540352242922",
        "verify_token": "whatsapp-verify-0005",
    },
    "twilio": {"account_sid": "AC" + "1" * 32, "auth_token": "twilio-auth-token-0006"},
}


def endpoint(
    channel: str = "telegram",
    *,
    id: str = ENDPOINT_ID,
    tenant: str = "t",
    created_at: int = 0,
    **fields: Any,
) -> ChannelEndpoint:
    return ChannelEndpoint.model_validate(
        {
            "id": id,
            "tenant": tenant,
            "channel": channel,
            "credentials": dict(CREDENTIALS[channel]),
            "created_at": created_at,
            **fields,
        }
    )


# -- session_for ------------------------------------------------------------------------------


def test_a_chat_always_maps_to_the_same_session() -> None:
    first = endpoint().session_for("-1001234567890", "77")
    again = endpoint().session_for("-1001234567890", "77")
    assert first == again == f"telegram:{ENDPOINT_ID}:-1001234567890:t77"


def test_the_session_names_the_channel_and_endpoint() -> None:
    assert endpoint("slack").session_for("D1") == f"slack:{ENDPOINT_ID}:D1"
    other = endpoint("slack", id="ch_fedcba9876543210").session_for("D1")
    assert other == "slack:ch_fedcba9876543210:D1"


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (("+1",), ("_2b1",)),
        (("a:b",), ("a_3ab",)),
        (("a b",), ("a_20b",)),
        (("é",), ("_c3_a9",)),
        (("_",), ("_5f",)),
        (("a",), ("A",)),
        (("C1",), ("C1", "1700000000.000100")),
        (("C1", "1.1"), ("C1", "1.2")),
        (("C1", "x"), ("C1", None, "x")),
        (("+1555",), ("+1555", None, "+1666")),
        (("+1555", None, "+1666"), ("+1555", None, "+1777")),
        (("a:tb",), ("a", "b")),
        (("a", "b:vc"), ("a", "b", "c")),
        (("x" * 31,), ("x" * 32,)),
        (("é" * 11,), ("é" * 12,)),
    ],
)
def test_different_chats_threads_or_numbers_map_to_different_sessions(
    one: tuple[str, ...], other: tuple[str, ...]
) -> None:
    assert endpoint().session_for(*one) != endpoint().session_for(*other)


def test_an_empty_thread_or_number_is_the_same_as_none() -> None:
    ep = endpoint()
    assert ep.session_for("C1", "", "") == ep.session_for("C1") == ep.session_for("C1", None, None)


def test_the_same_chat_of_two_endpoints_maps_to_two_sessions() -> None:
    assert endpoint().session_for("42") != endpoint(id="ch_0000000000000001").session_for("42")
    assert endpoint("slack").session_for("42") != endpoint("telegram").session_for("42")


chats = st.text(max_size=45)


@settings(max_examples=300, deadline=None)
@given(
    one=st.tuples(chats, st.none() | chats, st.none() | chats),
    other=st.tuples(chats, st.none() | chats, st.none() | chats),
)
def test_sessions_are_equal_only_for_equal_chats(
    one: tuple[str, str | None, str | None], other: tuple[str, str | None, str | None]
) -> None:
    def meaning(key: tuple[str, str | None, str | None]) -> tuple[str, str, str]:
        return (key[0], key[1] or "", key[2] or "")

    same = meaning(one) == meaning(other)
    assert (endpoint().session_for(*one) == endpoint().session_for(*other)) == same


@settings(max_examples=300, deadline=None)
@given(
    channel=st.sampled_from(CHANNELS),
    chat=st.text(min_size=1, max_size=300),
    thread=st.none() | st.text(max_size=300),
    via=st.none() | st.text(max_size=300),
)
def test_every_session_is_a_valid_session_id(
    channel: str, chat: str, thread: str | None, via: str | None
) -> None:
    session = endpoint(channel, id=new_endpoint_id()).session_for(chat, thread, via)
    assert is_valid_session_id(session), session
    assert len(session) <= SESSION_ID_MAX


@pytest.mark.parametrize("channel", CHANNELS)
def test_the_longest_parts_still_fit_a_session_id(channel: str) -> None:
    longest = ["x" * 30, "\U0010ffff" * 1000, "." * 30, ":" * 10, "_" * 10]
    ep = endpoint(channel)
    for chat in longest:
        for thread in longest:
            for via in longest:
                session = ep.session_for(chat, thread, via)
                assert is_valid_session_id(session) and len(session) <= SESSION_ID_MAX


def test_a_long_chat_id_becomes_a_digest() -> None:
    session = endpoint().session_for("x" * 31)
    assert session == f"telegram:{ENDPOINT_ID}:_h" + hashlib.sha256(b"x" * 31).hexdigest()[:24]


def test_a_chat_spelled_like_a_digest_does_not_share_the_long_chats_session() -> None:
    long_chat = "x" * 31
    for prefix in ("h", "_h"):  # "_" itself is escaped, so no chat id spells the digest
        spelled = prefix + hashlib.sha256(long_chat.encode()).hexdigest()[:24]
        assert endpoint().session_for(long_chat) != endpoint().session_for(spelled)


# -- masked -----------------------------------------------------------------------------------


@pytest.mark.parametrize("channel", CHANNELS)
def test_masked_shows_public_credentials_and_only_the_end_of_secret_ones(channel: str) -> None:
    ep = endpoint(channel)
    masked = ep.masked()
    assert set(masked) == set(ep.credentials)
    for name, value in ep.credentials.items():
        if name in ep.platform.public:
            assert masked[name] == value
        else:
            assert masked[name] == "…" + (value[-4:] if len(value) >= 16 else "")
            assert value[:-4] not in masked[name]


def test_a_short_secret_is_not_shown_at_all() -> None:
    ep = endpoint("slack").model_copy(
        update={"credentials": {"bot_token": "xoxb", "signing_secret": "s" * 20}}
    )
    assert ep.masked() == {"bot_token": "…", "signing_secret": "…ssss"}


def test_masked_shows_the_whatsapp_number_and_twilio_account_in_full() -> None:
    assert endpoint("whatsapp").masked()["phone_number_id"] == "106540352242922"
    assert endpoint("twilio").masked()["account_sid"] == "AC" + "1" * 32
    assert endpoint("twilio").masked()["auth_token"] == "…0006"


def test_masked_leaves_the_endpoint_unchanged() -> None:
    ep = endpoint("slack")
    ep.masked()
    assert ep.credentials == CREDENTIALS["slack"]


# -- Directory (real Redis) -------------------------------------------------------------------


@pytest.fixture
def directory(store: SessionStore) -> Directory:
    return Directory(store.client, store.globals)


async def test_a_saved_endpoint_is_found_by_its_id(directory: Directory) -> None:
    ep = endpoint("whatsapp", id=new_endpoint_id(), debounce_s=0.5, unsupported_reply="?")
    await directory.save(ep)
    assert await directory.find(ep.id) == ep
    assert await directory.find(ep.id, fresh=True) == ep
    assert await directory.find(new_endpoint_id()) is None


async def test_saving_again_replaces_the_endpoint_at_once(directory: Directory) -> None:
    ep = endpoint(id=new_endpoint_id())
    await directory.save(ep)
    assert await directory.find(ep.id) == ep  # now remembered
    changed = ep.model_copy(update={"failure_reply": None, "per_second": 5})
    await directory.save(changed)
    assert await directory.find(ep.id) == changed


async def test_find_remembers_an_endpoint_until_asked_fresh(
    directory: Directory, store: SessionStore, client: redis.Redis
) -> None:
    ep = endpoint(id=new_endpoint_id())
    await directory.save(ep)
    assert await directory.find(ep.id) == ep
    elsewhere = ep.model_copy(update={"debounce_s": 9.0})
    client.hset(store.globals.channels, ep.id, elsewhere.model_dump_json())  # another replica
    assert (await directory.find(ep.id)) == ep
    assert (await directory.find(ep.id, fresh=True)) == elsewhere


async def test_of_tenant_lists_only_the_tenants_endpoints_oldest_first(
    directory: Directory,
) -> None:
    mine = [
        endpoint(channel, id=new_endpoint_id(), tenant="acme", created_at=at)
        for channel, at in [("slack", 300), ("telegram", 100), ("twilio", 200)]
    ]
    theirs = endpoint("whatsapp", id=new_endpoint_id(), tenant="other", created_at=50)
    for ep in [*mine, theirs]:
        await directory.save(ep)
    assert [e.id for e in await directory.of_tenant("acme")] == [
        mine[1].id,
        mine[2].id,
        mine[0].id,
    ]
    assert await directory.of_tenant("other") == [theirs]
    assert await directory.of_tenant("nobody") == []


async def test_of_tenant_skips_ids_of_another_tenants_endpoint(
    directory: Directory, store: SessionStore, client: redis.Redis
) -> None:
    theirs = endpoint(id=new_endpoint_id(), tenant="other")
    await directory.save(theirs)
    client.sadd(store.globals.channel_ids("acme"), theirs.id, new_endpoint_id())
    assert await directory.of_tenant("acme") == []


async def test_remove_deletes_the_endpoint_and_its_listing(
    directory: Directory, store: SessionStore, client: redis.Redis
) -> None:
    ep = endpoint(id=new_endpoint_id(), tenant="acme")
    await directory.save(ep)
    assert await directory.find(ep.id) == ep  # remembered before the removal
    assert await directory.remove("acme", ep.id) is True
    assert await directory.find(ep.id) is None
    assert await directory.of_tenant("acme") == []
    assert not client.hexists(store.globals.channels, ep.id)
    assert not client.sismember(store.globals.channel_ids("acme"), ep.id)
    assert await directory.remove("acme", ep.id) is False


async def test_a_tenant_cannot_remove_another_tenants_endpoint(directory: Directory) -> None:
    ep = endpoint(id=new_endpoint_id(), tenant="acme")
    await directory.save(ep)
    assert await directory.remove("mallory", ep.id) is False
    assert await directory.find(ep.id, fresh=True) == ep
    assert await directory.of_tenant("acme") == [ep]
