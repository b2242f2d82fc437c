"""The `unblock` command line as a user drives it: help, migrate, keys, serve, and bad input."""

from __future__ import annotations

import re
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
    ["audit", "verify"],
    ["audit", "head"],
    ["audit", "list"],
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
    monkeypatch.setenv("UNBLOCK_SECRET_KEY", "0" * 64)
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
        (["audit", "verify", "--expect-head", "nope"], "--expect-head: 'nope' is not SEQ:MAC"),
        (["audit", "verify", "--expect-head", "0:" + "a" * 64], "--expect-head"),
        (["audit", "verify", "--expect-head", "7:" + "a" * 63], "--expect-head"),
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
    monkeypatch.setenv("UNBLOCK_SECRET_KEY", "0" * 64)
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


# --- the audit log ---------------------------------------------------------------------------------

KEY_A, KEY_B, KEY_C = "a" * 64, "b" * 64, "c" * 64


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _new_key(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["keys", "create", "--name", name, "--scope", "cases:read"], capsys)
    assert code == 0, err


def test_commands_that_write_the_audit_log_need_a_key(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """keys create/revoke, purge, audit verify/head refuse without a key: one line naming both settings."""
    monkeypatch.setenv("UNBLOCK_DATABASE_URL", database_url)
    for argv in (
        ["keys", "create", "--name", "x", "--scope", "cases:read"],
        ["keys", "revoke", "x"],
        ["purge", "--older-than", "400d"],
        ["audit", "verify"],
        ["audit", "head"],
    ):
        code, _, err = _run(argv, capsys)
        assert code == 2, (argv, err)
        assert err.startswith("unblock: configuration error: UNBLOCK_AUDIT_KEY or UNBLOCK_SECRET_KEY"), err
        assert err.count("\n") == 1


def test_a_taken_key_name_is_refused(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Names are unique, revoked keys included (the audit log keeps naming them): one line, exit status 2."""
    monkeypatch.setenv("UNBLOCK_DATABASE_URL", database_url)
    monkeypatch.setenv("UNBLOCK_SECRET_KEY", KEY_A)
    code, out, _ = _run(["keys", "create", "--name", "servicenow", "--scope", "cases:read"], capsys)
    assert code == 0
    assert main(["keys", "revoke", out.strip().splitlines()[-1][: len("ubk_") + 8]]) == 0
    assert "revoked" in capsys.readouterr().out
    code, out, err = _run(["keys", "create", "--name", "servicenow", "--scope", "cases:read"], capsys)
    assert code == 2
    assert err == "unblock: error: an API key named 'servicenow' already exists; choose another name\n"
    assert "ubk_" not in out
    assert main(["audit", "verify"]) == 0


def test_audit_list_shows_who_acted(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each line ends with the actor's kind and id: here kind cli and the OS user who ran the command."""
    import getpass

    monkeypatch.setenv("UNBLOCK_DATABASE_URL", database_url)
    monkeypatch.setenv("UNBLOCK_SECRET_KEY", KEY_A)
    _new_key("servicenow", capsys)
    code, out, _ = _run(["audit", "list"], capsys)
    assert code == 0
    line = out.strip().splitlines()[-1]
    assert f"cli:{getpass.getuser()}" in line
    assert "api_key.created" in line
    assert line.endswith(f"  cli:{getpass.getuser()}")


def test_audit_keys_rotate_and_older_records_still_verify(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """UNBLOCK_AUDIT_KEY=B,A after A: new records are signed with B, old ones verify with A; B alone does
    not verify the old ones, and names the first of them."""
    monkeypatch.setenv("UNBLOCK_DATABASE_URL", database_url)
    monkeypatch.setenv("UNBLOCK_AUDIT_KEY", KEY_A)
    _new_key("one", capsys)
    _new_key("two", capsys)
    monkeypatch.setenv("UNBLOCK_AUDIT_KEY", f"{KEY_B},{KEY_A}")
    _new_key("three", capsys)
    code, out, err = _run(["audit", "verify"], capsys)
    assert (code, out, err) == (0, "audit log intact: 3 records\n", "")
    monkeypatch.setenv("UNBLOCK_AUDIT_KEY", KEY_B)
    code, _, err = _run(["audit", "verify"], capsys)
    assert code == 1
    assert err.startswith("unblock: error: audit log broken at record 1: it is signed with audit key id"), err
    assert err.count("\n") == 1


def test_audit_keys_derived_from_a_rotated_secret_key_still_verify(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without UNBLOCK_AUDIT_KEY the key is derived from UNBLOCK_SECRET_KEY: rotating that (new first, old
    still listed) keeps the older records verifiable."""
    monkeypatch.setenv("UNBLOCK_DATABASE_URL", database_url)
    monkeypatch.setenv("UNBLOCK_SECRET_KEY", KEY_A)
    _new_key("one", capsys)
    monkeypatch.setenv("UNBLOCK_SECRET_KEY", f"{KEY_B},{KEY_A}")
    _new_key("two", capsys)
    assert _run(["audit", "verify"], capsys)[:2] == (0, "audit log intact: 2 records\n")


def test_audit_verify_with_only_a_wrong_key_fails(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key that signed none of the records: exit 1, one line naming record 1."""
    monkeypatch.setenv("UNBLOCK_DATABASE_URL", database_url)
    monkeypatch.setenv("UNBLOCK_SECRET_KEY", KEY_A)
    _new_key("one", capsys)
    monkeypatch.setenv("UNBLOCK_SECRET_KEY", KEY_C)
    code, out, err = _run(["audit", "verify"], capsys)
    assert (code, out) == (1, "")
    assert err.startswith("unblock: error: audit log broken at record 1:"), err
    assert err.count("\n") == 1


def test_audit_head_and_expect_head_detect_truncation(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`audit head` prints SEQ:MAC; once the newest records are deleted the rest still verifies, but not
    with --expect-head: exit 1, one line naming the missing head."""
    from sqlalchemy import create_engine, text

    from service.persistence.db import sync_url

    monkeypatch.setenv("UNBLOCK_DATABASE_URL", database_url)
    monkeypatch.setenv("UNBLOCK_SECRET_KEY", KEY_A)
    code, out, err = _run(["audit", "head"], capsys)
    assert (code, err) == (1, "unblock: error: the audit log is empty: there is no head yet\n")
    for name in ("one", "two", "three"):
        _new_key(name, capsys)
    code, out, _ = _run(["audit", "head"], capsys)
    assert code == 0
    head = out.strip()
    assert re.fullmatch(r"3:[0-9a-f]{64}", head), out
    assert out.count("\n") == 1
    assert _run(["audit", "verify", "--expect-head", head], capsys)[:2] == (
        0,
        "audit log intact: 3 records, including head 3\n",
    )

    engine = create_engine(sync_url(database_url))
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_log WHERE seq >= 2"))
    engine.dispose()
    assert _run(["audit", "verify"], capsys)[0] == 0  # what is left is a consistent chain
    code, out, err = _run(["audit", "verify", "--expect-head", head], capsys)
    assert (code, out) == (1, "")
    assert err == (
        "unblock: error: audit log broken at record 3: the chain ends at record 1, before the expected head "
        "(newer records were removed)\n"
    )
