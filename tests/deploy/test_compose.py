"""docker-compose.yml cannot be run here; check that what it declares is what we rely on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def test_redis_keeps_an_append_only_file_and_never_evicts() -> None:
    redis = _compose()["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    assert redis["healthcheck"]["test"][-1] == "ping"


def test_api_and_worker_wait_for_a_healthy_redis_and_run_the_real_entry_points() -> None:
    services = _compose()["services"]
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert services[name]["environment"]["CHATLANE_REDIS_URL"] == "redis://redis:6379/0"
    assert services["api"]["command"][:3] == ["python", "-m", "api.server"]
    assert services["worker"]["command"][:4] == ["celery", "-A", "worker.app", "worker"]


def test_the_image_installs_every_package_the_project_ships() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    assert {"api", "worker", "shared"} <= set(packages)
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in packages:
        assert f"COPY {package} ./{package}" in dockerfile
