"""The ``chatlane`` command behaves like a command: help, version, unknown options."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest
from click.testing import CliRunner

from cli.main import main
from shared.redis import masked


def test_help_is_plain_text_with_defaults() -> None:
    result = CliRunner().invoke(main, ["--help"], prog_name="chatlane")
    assert result.exit_code == 0
    assert "``" not in result.output and "Usage: chatlane" in result.output
    for command in ("up", "api", "worker"):
        assert command in result.output
    up = CliRunner().invoke(main, ["up", "--help"]).output
    assert "--port INTEGER RANGE" in up and "[default: 8000;" in up
    assert "[default: 127.0.0.1]" in up and "--data-dir" in up


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"chatlane, version {importlib.metadata.version('chatlane')}"


@pytest.mark.parametrize("command", ["up", "api"])
def test_unknown_options_are_refused(command: str) -> None:
    result = CliRunner().invoke(main, [command, "--prot", "8005"])
    assert result.exit_code == 2
    assert "No such option '--prot'" in result.output and "'--port'" in result.output


def test_worker_help_says_where_its_arguments_go() -> None:
    result = CliRunner().invoke(main, ["worker", "--help"])
    assert result.exit_code == 0
    assert "goes to `celery worker`" in " ".join(result.output.split())


def test_the_installed_entry_point_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "--version"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and done.stdout.startswith("chatlane, version")


def test_passwords_are_masked_in_printed_urls() -> None:
    assert masked("redis://:s3cret@db.example:6380/2") == "redis://:***@db.example:6380/2"
    assert masked("rediss://app:s3cret@[::1]:6379/0") == "rediss://app:***@[::1]:6379/0"
    assert masked("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
