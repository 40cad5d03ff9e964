"""``chatlane channels``: endpoints made, listed and deleted in Redis as the API keeps them."""

from __future__ import annotations

import asyncio
import re

import pytest
import redis
from click.testing import CliRunner, Result
from fastapi.testclient import TestClient

from api.main import create_app
from cli.main import main
from shared.channels.endpoints import ChannelEndpoint, Directory
from shared.keys import GlobalKeys
from shared.redis import async_client
from shared.settings import Settings
from tests.api.conftest import LOCAL
from tests.support.platform_requests import telegram_request, telegram_text_message

CREDENTIALS: dict[str, dict[str, str]] = {
    "telegram": {"bot_token": "123456:telegram-token"},
    "slack": {"bot_token": "xoxb-slack-token", "signing_secret": "slack-signing-secret"},
    "whatsapp": {
        "access_token": "EAAG-whatsapp-token",
        "app_secret": "whatsapp-app-secret",
        "phone_number_id": "106540352242922",
    },
    "twilio": {"account_sid": "AC" + "0" * 32, "auth_token": "twilio-auth-token"},
}
GENERATED = {"telegram": "secret_token", "whatsapp": "verify_token"}
PUBLIC = {"phone_number_id", "account_sid"}


def run(settings: Settings, *args: str, **env: str) -> Result:
    environment = {
        "CHATLANE_REDIS_URL": settings.redis_url,
        "CHATLANE_KEY_PREFIX": settings.key_prefix,
        **env,
    }
    return CliRunner().invoke(main, ["channels", *args], env=environment)


def create(settings: Settings, channel: str, tenant: str = "acme", *more: str) -> dict[str, str]:
    """Make an endpoint with the test credentials; what it printed, by name."""
    pairs = [f"--credential={name}={value}" for name, value in CREDENTIALS[channel].items()]
    made = run(settings, "create", channel, "--tenant", tenant, *pairs, *more)
    assert made.exit_code == 0, made.output
    return dict(line.split("=", 1) for line in made.stdout.splitlines())


def find(settings: Settings, endpoint_id: str) -> ChannelEndpoint | None:
    async def look() -> ChannelEndpoint | None:
        client = async_client(settings.redis_url)
        try:
            return await Directory(client, GlobalKeys(settings.key_prefix)).find(endpoint_id)
        finally:
            await client.aclose()

    return asyncio.run(look())


@pytest.mark.parametrize("channel", list(CREDENTIALS))
def test_an_endpoint_is_made_shown_in_full_once_then_masked(
    settings: Settings, channel: str
) -> None:
    pairs = (f"--credential={name}={value}" for name, value in CREDENTIALS[channel].items())
    made = run(settings, "create", channel, "--tenant", "acme", *pairs)
    assert made.exit_code == 0, made.output
    printed = dict(line.split("=", 1) for line in made.stdout.splitlines())
    endpoint_id = printed.pop("id")
    assert re.fullmatch(r"ch_[0-9a-f]{16}", endpoint_id)
    path = printed.pop("webhook_path")
    assert path == f"/v1/channels/{channel}/{endpoint_id}/webhook"
    assert f"https://<your host>{path}" in made.stderr and "only now" in made.stderr
    generated = GENERATED.get(channel)
    assert set(printed) == set(CREDENTIALS[channel]) | ({generated} if generated else set())
    assert {name: printed[name] for name in CREDENTIALS[channel]} == CREDENTIALS[channel]
    if generated:
        assert len(printed[generated]) >= 32
        assert printed[generated] not in made.stderr

    found = find(settings, endpoint_id)  # as the webhook route looks it up
    assert found is not None and found.credentials == printed
    assert (found.tenant, found.channel, found.webhook_path) == ("acme", channel, path)
    assert found.strategy == "coalesce" and found.debounce_s == 1.5 and found.per_second is None

    listed = run(settings, "list", "--tenant", "acme")
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.stdout.splitlines() if line.startswith(endpoint_id))
    assert "acme" in row and channel in row and path in row
    for name, value in printed.items():
        shown = value if name in PUBLIC else "…" + value[-4:]
        assert f"{name}={shown}" in row
        if name not in PUBLIC:
            assert value not in listed.stdout


def test_the_settings_given_are_kept(settings: Settings) -> None:
    printed = create(
        settings, "twilio", "acme",
        "--strategy", "enqueue", "--debounce-s", "0.25", "--per-second", "5",
        "--unsupported-reply", "Text only, please.", "--failure-reply", "Oops.",
        "--public-url", "https://bots.example.com/v1/channels/twilio/x/webhook",
    )  # fmt: skip
    found = find(settings, printed["id"])
    assert found is not None
    assert found.strategy == "enqueue" and found.debounce_s == 0.25 and found.per_second == 5
    assert (found.unsupported_reply, found.failure_reply) == ("Text only, please.", "Oops.")
    assert found.public_url == "https://bots.example.com/v1/channels/twilio/x/webhook"
    assert found.api_base is None


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["slack", "--credential", "bot_token=xoxb-1"], "signing_secret"),
        (["telegram", "--credential", "bot_token=1", "--credential", "extra=x"], "extra"),
        (["telegram"], "bot_token"),
        (["telegram", "--credential", "bot_token"], "name=value"),
        (["telegram", "--credential", "bot_token="], "bot_token"),
        (["telegram", "--credential", "bot_token=1", "--credential", "bot_token=2"], "twice"),
        (["telegram", "--credential", "bot_token=1", "--credential", "secret_token=a b"],
         "secret_token"),
        (["telegram", "--credential", "bot_token=1", "--debounce-s", "61"], "--debounce-s"),
        (["telegram", "--credential", "bot_token=1", "--api-base", "ftp://x"], "--api-base"),
        (["telegram", "--credential", "bot_token=1", "--api-base", "http://127.0.0.1:9"],
         "--api-base"),
        (["fax", "--credential", "bot_token=1"], "fax"),
    ],
)  # fmt: skip
def test_an_incomplete_or_unknown_endpoint_is_refused_and_nothing_saved(
    settings: Settings, client: redis.Redis, args: list[str], why: str
) -> None:
    refused = run(settings, "create", *args, "--tenant", "acme")
    assert refused.exit_code == 2, refused.output
    assert why in refused.stderr
    assert refused.stdout == ""
    keys = GlobalKeys(settings.key_prefix)
    assert client.hlen(keys.channels) == 0 and not client.exists(keys.channel_ids("acme"))


def test_a_bad_tenant_is_refused(settings: Settings) -> None:
    for args in (
        ["create", "telegram", "--credential", "bot_token=1", "--tenant", "a:b"],
        ["list", "--tenant", "a:b"],
        ["delete", "ch_0000000000000000", "--tenant", ""],
    ):
        result = run(settings, *args)
        assert result.exit_code == 2 and "--tenant" in result.stderr, result.output


def test_a_private_api_base_is_taken_when_allowed(settings: Settings) -> None:
    allowed = {"CHATLANE_CHANNEL_ALLOW_PRIVATE": "true"}
    args = ["telegram", "--tenant", "acme", "--credential=bot_token=1"]
    made = run(settings, "create", *args, "--api-base", "http://127.0.0.1:9", **allowed)
    assert made.exit_code == 0, made.output
    found = find(settings, made.stdout.split()[0].removeprefix("id="))
    assert found is not None and found.api_base == "http://127.0.0.1:9"


def test_list_shows_every_tenant_unless_one_is_named(settings: Settings) -> None:
    assert run(settings, "list").stdout.splitlines()[1:] == []
    first = create(settings, "telegram", "acme")["id"]
    second = create(settings, "slack", "globex")["id"]
    every = [line.split()[0] for line in run(settings, "list").stdout.splitlines()[1:]]
    assert every == [first, second]
    only = run(settings, "list", "--tenant", "globex").stdout.splitlines()[1:]
    assert [line.split()[0] for line in only] == [second]
    assert run(settings, "list", "--tenant", "nobody").stdout.splitlines()[1:] == []


def test_an_endpoint_is_deleted_by_its_own_tenant_only(settings: Settings) -> None:
    endpoint_id = create(settings, "whatsapp", "acme")["id"]
    foreign = run(settings, "delete", endpoint_id, "--tenant", "globex")
    assert foreign.exit_code == 1
    assert f"no channel endpoint {endpoint_id} of tenant globex" in foreign.stderr
    assert find(settings, endpoint_id) is not None

    deleted = run(settings, "delete", endpoint_id, "--tenant", "acme")
    assert deleted.exit_code == 0, deleted.output
    assert "deleted" in deleted.stdout
    assert find(settings, endpoint_id) is None
    assert run(settings, "list").stdout.splitlines()[1:] == []
    again = run(settings, "delete", endpoint_id, "--tenant", "acme")
    assert again.exit_code == 1 and "no channel endpoint" in again.stderr


def test_the_api_serves_the_webhook_of_an_endpoint_the_command_made(settings: Settings) -> None:
    printed = create(settings, "telegram", "acme", "--credential", "secret_token=s3cret")
    assert printed["secret_token"] == "s3cret"
    update = telegram_text_message(chat_id=5, text="hello")
    with TestClient(create_app(settings), raise_server_exceptions=False, client=LOCAL) as api:
        wrong = api.post(
            printed["webhook_path"], **telegram_request(update, secret_token="x").kwargs()
        )
        assert wrong.status_code == 401, wrong.text
        right = telegram_request(update, secret_token="s3cret")
        assert api.post(printed["webhook_path"], **right.kwargs()).status_code == 200
