"""Every way chatlane starts the API starts it with the HTTP limits of ``api.http11``."""

from __future__ import annotations

from pathlib import Path

from api import server
from api.http11 import HardenedH11Protocol, HttpLimits
from cli.supervise import api_command
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_the_supervised_api_is_the_hardened_server_and_takes_workers_and_a_log_level() -> None:
    args = api_command("127.0.0.1", 8123, "--workers", "3", "--log-level", "warning")
    assert args[1:3] == ["-m", "api.server"]
    parsed = server.parser().parse_args(args[3:])
    assert (parsed.host, parsed.port, parsed.workers) == ("127.0.0.1", 8123, 3)
    assert parsed.log_level == "warning" and parsed.access_log is False


def test_the_server_config_carries_the_settings_limits() -> None:
    settings = Settings(
        http_head_timeout_s=4,
        http_idle_timeout_s=7,
        http_max_head_bytes=32768,
        http_max_connections=20_000,
        max_body_bytes=9000,
    )
    config = server.config(settings, "127.0.0.1", 8123, workers=2)
    assert config.http is HardenedH11Protocol and config.ws == "none"
    assert config.timeout_keep_alive == 7 and config.workers == 2
    assert config.http_limits == HttpLimits(
        head_timeout_s=4, max_head_bytes=32768, max_body_bytes=9000, max_connections=20_000
    )


def test_the_default_connection_cap_leaves_room_for_every_waiter() -> None:
    settings = Settings()
    assert settings.http_max_connections >= 3 * settings.max_waiters


def test_the_container_runs_the_hardened_server() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'CMD ["python", "-m", "api.server"' in dockerfile
