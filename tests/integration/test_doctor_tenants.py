"""`unblock doctor` with many tenants, against the sandbox over real pypsrp.

The sandbox's demo seed hosts contoso (the settings' tenant, ``default``) and fabrikam (added
with `unblock tenants add`). doctor checks every enabled tenant, each connected the way its
gateway connects (fabrikam with its own identity, and its own sealed remoting password when it
has one), or only the ``--tenant`` one; a name that is not a tenant is one line and exit 2.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from service.cli import main as cli_main
from service.sandbox.server import SandboxServer
from tests.helpers import UNBLOCK, sandbox_env
from tests.stack import SECRET

FABRIKAM = (
    "fabrikam",
    "--organization",
    "fabrikam.onmicrosoft.com",
    "--app-id",
    "22222222-3333-4444-5555-666666666666",
    "--cert-thumbprint",
    "B" * 40,
    "--no-validate",
)


def _env(sandbox: SandboxServer, database_url: str, **extra: str) -> dict[str, str]:
    """The environment of an `unblock` command on the service host: the sandbox as contoso's endpoint."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("UNBLOCK_")}
    settings = {"UNBLOCK_DATABASE_URL": database_url, "UNBLOCK_SECRET_KEY": SECRET, **extra}
    return clean | sandbox_env(sandbox.port) | settings


def _unblock(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([UNBLOCK, *args], env=env, capture_output=True, text=True, timeout=120, check=False)


class Cli:
    """`unblock` in this process (its own entry point, :func:`service.cli.main`), with ``env`` as its
    only UNBLOCK_* settings: much quicker than a process each, for what needs no process of its own."""

    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env: dict[str, str]
    ) -> None:
        for name in [n for n in os.environ if n.startswith("UNBLOCK_")]:
            monkeypatch.delenv(name)
        for name, value in env.items():
            if name.startswith("UNBLOCK_"):
                monkeypatch.setenv(name, value)
        self.capsys = capsys

    def __call__(self, *args: str) -> tuple[int, str, str]:
        """Exit status, stdout and stderr of `unblock ARGS`."""
        self.capsys.readouterr()
        code = cli_main(list(args))
        out, err = self.capsys.readouterr()
        return code, out, err


def _add_fabrikam(env: dict[str, str], *extra: str) -> None:
    added = _unblock(env, "tenants", "add", *FABRIKAM, *extra)
    assert added.returncode == 0, added.stdout + added.stderr


def _tenants_called(sandbox: SandboxServer) -> set[str]:
    """The sandbox tenants that received a command (the sign-ins included)."""
    with sandbox.tenant.lock:
        return {call.tenant for call in sandbox.calls}


def test_doctor_checks_every_tenant(sandbox: SandboxServer, database_url: str) -> None:
    """Without --tenant both tenants are checked, each as its own sandbox tenant: a heading each, JSON per tenant.

    As real processes, the way an operator runs them.
    """
    env = _env(sandbox, database_url)
    _add_fabrikam(env)

    text = _unblock(env, "doctor", "--timeout", "20")
    assert text.returncode == 0, text.stdout + text.stderr
    lines = text.stdout.splitlines()
    headings = [line for line in lines if line.startswith("== ")]
    assert headings == ["== tenant default (contoso.onmicrosoft.com)", "== tenant fabrikam (fabrikam.onmicrosoft.com)"]
    assert lines[-1] == "all checks passed in 2 tenants"
    assert _tenants_called(sandbox) == {"contoso", "fabrikam"}
    with sandbox.tenant.lock:
        read_in = {call.tenant for call in sandbox.calls if call.cmdlet == "Get-AcceptedDomain"}
    assert read_in == {"contoso", "fabrikam"}, "each tenant's probes ran connected as that tenant"

    as_json = _unblock(env, "doctor", "--json", "--timeout", "20")
    assert as_json.returncode == 0, as_json.stdout + as_json.stderr
    answer = json.loads(as_json.stdout)
    assert answer["passed"] is True
    assert "checks" not in answer
    assert [t["tenant"] for t in answer["tenants"]] == ["default", "fabrikam"]
    for tenant in answer["tenants"]:
        assert tenant["passed"] is True, tenant
        by_name = {c["name"]: c for c in tenant["checks"]}
        assert by_name["session"]["status"] == "ok"
        assert by_name["command Remove-BlockedSenderAddress"]["status"] == "ok"
    fabrikam = {c["name"]: c for c in answer["tenants"][1]["checks"]}
    assert "fabrikam.com" in fabrikam["read Get-AcceptedDomain"]["detail"]
    with sandbox.tenant.lock:
        writes = [c for c in sandbox.calls if not c.cmdlet.startswith(("Get-", "Connect-"))]
    assert writes == [], "doctor changed nothing in either tenant"


def test_doctor_tenant_checks_only_that_tenant_with_its_sealed_password(
    sandbox: SandboxServer,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--tenant fabrikam connects with fabrikam's own (sealed) remoting password and touches no other tenant.

    The settings' password is wrong here, so only the tenant's opened password can sign in: checking
    every tenant then fails default alone, and exits 1.
    """
    unblock = Cli(monkeypatch, capsys, _env(sandbox, database_url, UNBLOCK_PS_PASSWORD="not-the-password"))
    password = tmp_path / "fabrikam-password"
    password.write_text("sandbox\n", encoding="utf-8")
    code, _, err = unblock("tenants", "add", *FABRIKAM, "--ps-username", "sandbox", "--ps-password-file", str(password))
    assert code == 0, err

    code, out, err = unblock("doctor", "--tenant", "fabrikam", "--json", "--timeout", "20")
    assert code == 0, out + err
    answer = json.loads(out)
    assert answer["passed"] is True
    assert "tenants" not in answer, "one tenant keeps the shape from before tenants"
    assert {c["name"]: c["status"] for c in answer["checks"]}["session"] == "ok"
    assert _tenants_called(sandbox) == {"fabrikam"}

    code, out, err = unblock("doctor", "--timeout", "20")
    assert code == 1, out + err
    lines = out.splitlines()
    assert lines[-1] == "1 of 2 tenants failed: default"
    default = lines[lines.index("== tenant default (contoso.onmicrosoft.com)") + 1]
    assert default.startswith("fail  endpoint"), "the settings' wrong password is refused"


def test_doctor_refuses_a_tenant_that_is_not_there(
    sandbox: SandboxServer, database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown or disabled tenant is one line on stderr and exit 2, before any endpoint is contacted."""
    unblock = Cli(monkeypatch, capsys, _env(sandbox, database_url))
    assert unblock("tenants", "add", *FABRIKAM)[0] == 0
    assert unblock("doctor", "--tenant", "nosuch") == (2, "", "unblock: error: no tenant nosuch\n")
    assert unblock("tenants", "disable", "fabrikam")[0] == 0
    assert unblock("doctor", "--tenant", "fabrikam") == (2, "", "unblock: error: tenant fabrikam is disabled\n")
    assert _tenants_called(sandbox) == set()


def test_doctor_before_migrate_checks_the_settings_tenant_and_creates_no_database(
    sandbox: SandboxServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """doctor is meant to run before `unblock migrate`: no database yet is one tenant, checked as before."""
    database = tmp_path / "not-yet.db"
    unblock = Cli(monkeypatch, capsys, _env(sandbox, f"sqlite:///{database}"))
    code, out, err = unblock("doctor", "--timeout", "20")
    assert code == 0, out + err
    assert "== tenant" not in out
    assert out.splitlines()[-1] == "all checks passed"
    code, out, err = unblock("doctor", "--tenant", "fabrikam")
    assert (code, out) == (2, "")
    assert err.startswith("unblock: error: no tenant fabrikam")
    assert err.count("\n") == 1
    assert not database.exists()


def test_a_tenant_doctor_cannot_connect_as_fails_alone(
    sandbox: SandboxServer,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A sealed password no configured key opens, or no endpoint at all: that tenant's check fails, named."""
    env = _env(sandbox, database_url)
    password = tmp_path / "fabrikam-password"
    password.write_text("sandbox\n", encoding="utf-8")
    unblock = Cli(monkeypatch, capsys, env)
    assert unblock("tenants", "add", *FABRIKAM, "--ps-password-file", str(password))[0] == 0

    monkeypatch.setenv("UNBLOCK_SECRET_KEY", "1" * 64)  # not the key that sealed it
    code, out, _ = unblock("doctor", "--tenant", "fabrikam", "--json")
    assert code == 1
    checks = json.loads(out)["checks"]
    assert [(c["name"], c["status"]) for c in checks] == [("remoting password", "fail")]
    assert "UNBLOCK_SECRET_KEY" in checks[0]["detail"]
    assert _tenants_called(sandbox) == set()

    # Settings that name no endpoint: `default` is not a tenant here, and fabrikam has none of its own.
    monkeypatch.setenv("UNBLOCK_SECRET_KEY", SECRET)
    monkeypatch.delenv("UNBLOCK_PS_SERVER")
    code, out, _ = unblock("doctor")
    assert code == 1
    assert out.splitlines()[0].startswith("fail  endpoint  no PowerShell endpoint is set for this tenant")
    assert _tenants_called(sandbox) == set()
