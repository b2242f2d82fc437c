"""The `unblock` command line as a user drives it: help, migrate, keys, serve, and bad input."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from service.cli import app, main
from tests.helpers import free_port, unblock_process, wait_http

runner = CliRunner()

COMMANDS = [
    [],
    ["migrate"],
    ["serve"],
    ["worker"],
    ["sandbox"],
    ["keys"],
    ["keys", "create"],
    ["keys", "list"],
    ["keys", "revoke"],
    ["keys", "secret"],
    ["case"],
    ["case", "open"],
    ["case", "show"],
    ["case", "watch"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "unblock")
def test_help_works_everywhere(command: list[str]) -> None:
    """--help answers for every command and exits 0."""
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


@pytest.mark.parametrize("command", [[], ["keys"], ["case"], ["audit"]], ids=lambda c: " ".join(c) or "unblock")
def test_a_group_alone_prints_its_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """`unblock keys` with no subcommand: the help as written (not squeezed into one line), status 2."""
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err.startswith("Usage: unblock")
    assert "Commands:" in err
    assert err.count("\n") > 5


def test_migrate_then_keys_lifecycle(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """migrate, keys create (key alone on the last line), keys list (never the key), keys revoke."""
    monkeypatch.setenv("UNBLOCK_DATABASE_URL", database_url)
    assert runner.invoke(app, ["migrate"]).exit_code == 0

    created = runner.invoke(
        app, ["keys", "create", "--name", "servicenow", "--scope", "cases:read", "--scope", "cases:write"]
    )
    assert created.exit_code == 0, created.output
    last = created.output.rstrip("\n").splitlines()[-1]
    assert last.startswith("ubk_")
    assert " " not in last
    assert len(last) > 50

    listed = runner.invoke(app, ["keys", "list"])
    assert listed.exit_code == 0
    assert "servicenow" in listed.output
    assert "cases:read cases:write" in listed.output
    assert last not in listed.output
    prefix = last[: len("ubk_") + 8]
    assert prefix in listed.output

    revoked = runner.invoke(app, ["keys", "revoke", prefix])
    assert revoked.exit_code == 0
    assert "revoked" in runner.invoke(app, ["keys", "list"]).output


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["nope"], "No such command"),
        (["keys", "create", "--name", "x"], "--scope"),
        (["keys", "create", "--name", "x", "--scope", "cases:nope"], "unknown scope"),
        (["keys", "create", "--name", "x", "--scope", "admin", "--expires-in", "soon"], "duration"),
        (["keys", "revoke", "does-not-exist"], "no API key"),
        (["serve", "--port", "seventy"], "--port"),
    ],
)
def test_bad_input_is_one_line_and_status_2(
    argv: list[str],
    fragment: str,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Bad input: one line on stderr, exit status 2, no traceback."""
    monkeypatch.setenv("UNBLOCK_DATABASE_URL", database_url)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert fragment in err
    assert "Traceback" not in err


def test_bad_configuration_is_one_line_and_status_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad UNBLOCK_* value stops the command with one line naming the variable."""
    monkeypatch.setenv("UNBLOCK_PS_POOL_SIZE", "lots")
    assert main(["migrate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("unblock: configuration error: UNBLOCK_PS_POOL_SIZE")
    assert err.count("\n") == 1


def test_an_api_only_process_without_a_secret_key_is_refused(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`serve --no-worker` opens what the worker sealed (reveals, webhook secrets): no key, no start."""
    monkeypatch.setenv("UNBLOCK_DATABASE_URL", database_url)
    monkeypatch.delenv("UNBLOCK_SECRET_KEY", raising=False)
    assert main(["serve", "--no-worker", "--no-migrate", "--port", str(free_port())]) == 2
    err = capsys.readouterr().err
    assert err.startswith("unblock: configuration error: UNBLOCK_SECRET_KEY"), err
    assert err.count("\n") == 1


def test_serve_answers_healthz(database_url: str, tmp_path: Path) -> None:
    """`unblock serve` (a real process) migrates on start and answers /healthz and /readyz."""
    port = free_port()
    env = {"UNBLOCK_DATABASE_URL": database_url, "UNBLOCK_SECRET_KEY": "0" * 64}
    with unblock_process(["serve", "--port", str(port), "--no-worker"], env=env, tmp_path=tmp_path) as proc:
        response = wait_http(f"http://127.0.0.1:{port}/healthz", proc)
        assert response.status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
