"""Dockerfile and docker-compose.yml, checked by reading (no Docker engine runs here)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from typer.main import get_command

from service.cli import app
from service.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def _commands() -> set[str]:
    group = get_command(app)
    return set(group.commands)  # type: ignore[attr-defined]


def test_compose_parses_and_runs_real_commands() -> None:
    """PostgreSQL, the service and a second worker; every command named is a real `unblock` command."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "service", "worker"} <= set(services)
    assert services["service"]["command"][:2] == ["unblock", "serve"]
    assert services["worker"]["command"][:2] == ["unblock", "worker"]
    for name, service in services.items():
        command = service.get("command")
        if command:
            assert command[0] == "unblock", name
            assert command[1] in _commands(), f"{name}: unblock {command[1]} does not exist"
    env = services["service"]["environment"]
    assert env["UNBLOCK_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert services["worker"]["environment"] == env


def test_compose_names_only_real_settings() -> None:
    """Every UNBLOCK_* variable in the compose file is a setting of the service."""
    text = (ROOT / "docker-compose.yml").read_text()
    names = set(re.findall(r"\bUNBLOCK_([A-Z0-9_]+)\s*:", text))
    assert names
    assert {n.lower() for n in names} <= set(Settings.model_fields)


def test_dockerfile_is_slim_non_root_and_checks_health() -> None:
    """Slim base, a non-root user, `unblock serve` as the command, a health check on /healthz."""
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.\d+-slim", text, re.MULTILINE)
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users
    assert not users[-1].startswith(("root", "0"))
    assert "HEALTHCHECK" in text
    assert "/healthz" in text
    assert re.search(r'^CMD \["unblock", "serve"', text, re.MULTILINE)
    for copied in re.findall(r"^COPY (\S+)", text, re.MULTILINE):
        if not copied.startswith("--"):
            assert (ROOT / copied).exists(), f"the Dockerfile copies {copied}, which does not exist"
