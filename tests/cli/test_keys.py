"""``chatlane keys``, and refusing to serve the network while no key exists."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from api.main import create_app
from cli.main import main
from shared.settings import Settings
from tests.api.conftest import LOCAL


def _env(settings: Settings, **more: str) -> dict[str, str]:
    return {
        "CHATLANE_REDIS_URL": settings.redis_url,
        "CHATLANE_KEY_PREFIX": settings.key_prefix,
        **more,
    }


def test_a_key_is_made_listed_used_and_revoked(settings: Settings) -> None:
    runner = CliRunner()
    made = runner.invoke(main, ["keys", "create", "--tenant", "acme", "--name", "web"],
                         env=_env(settings))  # fmt: skip
    assert made.exit_code == 0, made.output
    key = made.stdout.strip()
    assert re.fullmatch(r"clk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", key)
    listed = runner.invoke(main, ["keys", "list"], env=_env(settings)).stdout
    assert key[4:16] in listed and "acme" in listed and "web" in listed and key not in listed

    auth = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(settings), raise_server_exceptions=False, client=LOCAL) as api:
        assert (
            api.post("/v1/sessions/s/turns", json={"content": "hi"}, headers=auth).status_code
            == 202
        )
        revoked = runner.invoke(main, ["keys", "revoke", key[4:16]], env=_env(settings))
        assert revoked.exit_code == 0 and "revoked" in revoked.stdout
        assert api.get("/v1/sessions/s", headers=auth).status_code == 401
    assert (
        runner.invoke(main, ["keys", "revoke", "000000000000"], env=_env(settings)).exit_code == 1
    )


def test_a_bad_tenant_name_is_refused(settings: Settings) -> None:
    result = CliRunner().invoke(main, ["keys", "create", "--tenant", "a:b"], env=_env(settings))
    assert result.exit_code == 2 and "--tenant" in result.output


@pytest.mark.parametrize("command", ["api", "up"])
def test_serving_the_network_without_a_key_is_refused_unless_asked_for(
    settings: Settings, command: str
) -> None:
    result = CliRunner().invoke(main, [command, "--host", "0.0.0.0", "--port", "1"],
                                env=_env(settings))  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "refusing to listen on 0.0.0.0" in result.output
    assert "chatlane keys create" in result.output and "CHATLANE_AUTH" in result.output
