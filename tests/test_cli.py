"""``chatlane up``: the embedded default starts everything, serves a turn, stops cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from shared.redis import answers
from shared.redis_server import free_port

ROOT = Path(__file__).resolve().parents[1]


def test_up_starts_its_own_redis_serves_a_turn_and_stops_everything_on_ctrl_c(
    tmp_path: Path,
) -> None:
    redis_port, api_port = free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    assert not answers(redis_url)
    env = {**os.environ, "CHATLANE_REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1"}
    log = (tmp_path / "up.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "up", "--port", str(api_port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{api_port}"
        deadline = time.monotonic() + 60
        while b"chatlane is up" not in (tmp_path / "up.log").read_bytes():
            assert proc.poll() is None, (tmp_path / "up.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "up.log").read_text()
            time.sleep(0.2)
        printed = (tmp_path / "up.log").read_text()
        assert f"started redis-server on {redis_url}" in printed
        assert f"curl -s -X POST '{base}/v1/sessions/demo/turns?wait=10'" in printed

        reply = httpx.post(f"{base}/v1/sessions/demo/turns?wait=10", json={"content": "hello"})
        assert reply.status_code == 200, reply.text
        assert reply.json()["output"]["content"] == "echo: hello (saw 0 earlier messages)"
        assert answers(redis_url)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
    assert code == 0
    assert not answers(redis_url, timeout_s=0.2)  # the managed Redis went with it
    assert b"chatlane: stopped" in (tmp_path / "up.log").read_bytes()


def test_up_refuses_to_stand_in_for_a_redis_on_another_host(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from shared import cli

    monkeypatch.setenv("CHATLANE_REDIS_URL", "redis://redis.example.invalid:6379/0")
    monkeypatch.setattr(cli, "answers", lambda url: False)  # no network lookups here
    monkeypatch.setattr(cli, "ManagedRedis", None)  # starting one would be a bug

    assert cli.up("127.0.0.1", free_port()) == 2
    assert "no Redis answers at redis://redis.example.invalid:6379/0" in capsys.readouterr().err
