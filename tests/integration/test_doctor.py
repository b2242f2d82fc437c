"""`unblock doctor` against the sandbox over real pypsrp: passes when all is there, names what is not."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest

from service.powershell.doctor import INVESTIGATION_PERMISSIONS, Doctor, Status
from service.sandbox.server import SandboxServer
from tests.helpers import UNBLOCK, sandbox_env
from tests.integration.test_bridge import sandbox_settings

JEA = {"ps_configuration_name": "UnblockRunner", "ps_connect_in_session": False, "ps_runner_functions": True}

#: The investigation's reads (UNBLOCK_CONTAINMENT enforce or report): a command check and a probe each.
INVESTIGATION_READS = (
    "Get-InboxRule",
    "Get-Mailbox",
    "Get-MailboxPermission",
    "Get-RecipientPermission",
    "Get-MgUserAuthenticationMethod",
    "Get-MgOauth2PermissionGrant",
    "Get-MgServicePrincipal",
)
INVESTIGATION_GRAPH_CHECKS = tuple(f"Graph may {action}" for action in sorted(INVESTIGATION_PERMISSIONS))


def _doctor(sandbox: SandboxServer, **overrides: Any) -> Doctor:
    doctor = Doctor(sandbox_settings(sandbox, **overrides), timeout=10)
    doctor.run()
    return doctor


def _by_name(doctor: Doctor) -> dict[str, Status]:
    return {check.name: check.status for check in doctor.checks}


@pytest.mark.parametrize(
    "overrides",
    [{}, {"password_backend": "ad"}, JEA, {**JEA, "password_backend": "ad"}],
    ids=["full endpoint", "full endpoint, AD", "JEA endpoint", "JEA endpoint, AD"],
)
def test_doctor_passes_against_the_sandbox(sandbox: SandboxServer, overrides: dict[str, Any]) -> None:
    """Every command the configuration needs is there with its parameters; every read-only probe works."""
    doctor = _doctor(sandbox, **overrides)
    assert doctor.passed, [c for c in doctor.checks if c.status is Status.fail]
    names = _by_name(doctor)
    assert names["session"] is Status.ok
    assert names["command Remove-BlockedSenderAddress"] is Status.ok
    assert names["read Get-BlockedSenderAddress"] is Status.ok
    if overrides.get("password_backend") == "ad":
        assert names["command Set-ADAccountPassword"] is Status.ok
        assert names["read Get-ADUser"] is Status.ok
    expected = "command Set-UnblockUserPassword" if overrides.get("ps_runner_functions") else "command Update-MgUser"
    if overrides.get("password_backend") != "ad":
        assert names[expected] is Status.ok
    # UNBLOCK_CONTAINMENT defaults to enforce: the investigation's commands and reads are checked too.
    for command in INVESTIGATION_READS:
        assert names[f"command {command}"] is Status.ok, command
        assert names[f"read {command}"] is Status.ok, command
    if not overrides.get("ps_runner_functions"):  # Graph permissions are readable on a full endpoint only
        for check in INVESTIGATION_GRAPH_CHECKS:
            assert names[check] is Status.ok, check
    writes = [c for c in sandbox.tenant.calls if not c.cmdlet.startswith(("Get-", "Connect-"))]
    assert writes == [], "doctor changed nothing"


@pytest.mark.parametrize("overrides", [{}, JEA], ids=["full endpoint", "JEA endpoint"])
def test_without_containment_the_investigation_is_not_checked(
    sandbox: SandboxServer, overrides: dict[str, Any]
) -> None:
    """UNBLOCK_CONTAINMENT=off: no investigation read is needed, probed or permission-checked."""
    sandbox.tenant.configure(
        {
            "denied_cmdlets": ["Get-MailboxPermission", "Get-RecipientPermission", "Get-MgServicePrincipal"],
            "forbidden_cmdlets": ["Get-MgUserAuthenticationMethod", "Get-MgOauth2PermissionGrant"],
            "graph_permissions": ["User.Read.All", "User-PasswordProfile.ReadWrite.All", "User.RevokeSessions.All"],
        }
    )
    doctor = _doctor(sandbox, containment="off", **overrides)
    assert doctor.passed, [c for c in doctor.checks if c.status is Status.fail]
    names = _by_name(doctor)
    investigation_only = [r for r in INVESTIGATION_READS if r not in ("Get-InboxRule", "Get-Mailbox")]
    for command in investigation_only:
        assert f"command {command}" not in names, command
    for command in INVESTIGATION_READS:
        assert f"read {command}" not in names, command
    assert not set(INVESTIGATION_GRAPH_CHECKS) & set(names)
    # Still used by the containment steps a request may ask for explicitly, so checked, but optional.
    assert names["command Get-InboxRule"] is Status.ok
    assert names["command Get-Mailbox"] is Status.ok
    investigated = {c.cmdlet for c in sandbox.tenant.calls} & {
        "Get-InboxRule",
        "Get-Mailbox",
        "Get-MailboxPermission",
        "Get-RecipientPermission",
        "Get-MgUserAuthenticationMethod",
        "Get-MgOauth2PermissionGrant",
        "Get-MgServicePrincipal",
    }
    assert investigated == set(), "with containment off doctor reads nothing of the investigation's"


@pytest.mark.parametrize("overrides", [{}, JEA], ids=["full endpoint", "JEA endpoint"])
def test_an_investigation_command_the_endpoint_hides_fails(sandbox: SandboxServer, overrides: dict[str, Any]) -> None:
    """With containment on, a hidden investigation read stops every case: its command check and probe fail."""
    sandbox.tenant.configure({"denied_cmdlets": ["Get-RecipientPermission"]})
    doctor = _doctor(sandbox, **overrides)
    assert not doctor.passed
    failed = [c for c in doctor.checks if c.status is Status.fail]
    assert [c.name for c in failed] == ["command Get-RecipientPermission", "read Get-RecipientPermission"]
    assert "missing from the endpoint" in failed[0].detail
    assert "investigation" in failed[0].detail


def test_a_refused_investigation_read_and_missing_graph_permissions_fail(sandbox: SandboxServer) -> None:
    """An Exchange read the application's role lacks, a Graph read without its permission: each fails, named."""
    sandbox.tenant.configure(
        {
            "forbidden_cmdlets": ["Get-MailboxPermission", "Get-MgUserAuthenticationMethod"],
            "graph_permissions": ["User.Read.All", "User-PasswordProfile.ReadWrite.All", "User.RevokeSessions.All"],
        }
    )
    doctor = _doctor(sandbox)
    by_name = {check.name: check for check in doctor.checks}
    assert by_name["read Get-MailboxPermission"].status is Status.fail
    assert by_name["read Get-MgUserAuthenticationMethod"].status is Status.fail
    assert "Permissions" in by_name["read Get-MailboxPermission"].fix
    assert by_name["read Get-RecipientPermission"].status is Status.ok
    methods = by_name["Graph may read sign-in methods"]
    assert methods.status is Status.fail
    assert "UserAuthenticationMethod.Read.All" in methods.fix
    assert "Directory.Read.All" in by_name["Graph may read app consents"].fix
    assert "Application.Read.All" in by_name["Graph may read apps"].fix
    assert by_name["Graph may read users"].status is Status.ok


def test_a_broader_graph_permission_counts(sandbox: SandboxServer) -> None:
    """Directory.Read.All covers users, app consents and apps (each page lists it); sign-in methods need their own."""
    sandbox.tenant.configure(
        {"graph_permissions": ["Directory.Read.All", "User-PasswordProfile.ReadWrite.All", "User.RevokeSessions.All"]}
    )
    names = _by_name(_doctor(sandbox))
    assert names["Graph may read users"] is Status.ok
    assert names["Graph may read app consents"] is Status.ok
    assert names["Graph may read apps"] is Status.ok
    assert names["Graph may read sign-in methods"] is Status.fail


def test_the_consent_probe_uses_the_probe_users_object_id(sandbox: SandboxServer) -> None:
    """With --mailbox naming a real user, the app-consent read filters on that user's object id."""
    settings = sandbox_settings(sandbox)
    doctor = Doctor(settings, timeout=10, mailbox="victor@contoso.com")
    doctor.run()
    by_name = {check.name: check for check in doctor.checks}
    assert by_name["read Get-MgOauth2PermissionGrant"].status is Status.ok
    assert by_name["read Get-MgOauth2PermissionGrant"].detail.startswith("the probe user:")
    assert "0 app consent" not in by_name["read Get-MgOauth2PermissionGrant"].detail


@pytest.mark.parametrize("overrides", [{}, JEA], ids=["full endpoint", "JEA endpoint"])
def test_doctor_fails_naming_a_command_the_endpoint_hides(sandbox: SandboxServer, overrides: dict[str, Any]) -> None:
    """A command absent from the endpoint (a role capability or role without it) fails the check naming it."""
    sandbox.tenant.configure({"denied_cmdlets": ["Remove-BlockedSenderAddress"]})
    doctor = _doctor(sandbox, **overrides)
    assert not doctor.passed
    failed = [c for c in doctor.checks if c.status is Status.fail]
    assert [c.name for c in failed] == ["command Remove-BlockedSenderAddress"]
    assert "missing from the endpoint" in failed[0].detail


def test_an_optional_command_missing_is_a_warning(sandbox: SandboxServer) -> None:
    """Commands only some cases use (inbox rules) warn instead of failing."""
    sandbox.tenant.configure({"denied_cmdlets": ["Disable-InboxRule"]})
    doctor = _doctor(sandbox)
    assert doctor.passed
    assert _by_name(doctor)["command Disable-InboxRule"] is Status.warn


def test_without_containment_reading_inbox_rules_is_optional(sandbox: SandboxServer) -> None:
    """UNBLOCK_CONTAINMENT=off: only cases that ask to disable rules read them, so a missing Get-InboxRule warns."""
    sandbox.tenant.configure({"denied_cmdlets": ["Get-InboxRule"]})
    doctor = _doctor(sandbox, containment="off")
    assert doctor.passed
    assert _by_name(doctor)["command Get-InboxRule"] is Status.warn


def test_a_refused_read_and_a_missing_graph_permission_fail(sandbox: SandboxServer) -> None:
    """A read the signed-in application may not do (Graph's 403) and a Graph permission not granted fail."""
    sandbox.tenant.configure({"forbidden_cmdlets": ["Get-MgUser"], "graph_permissions": ["User.Read.All"]})
    doctor = _doctor(sandbox)
    names = _by_name(doctor)
    assert names["read Get-MgUser"] is Status.fail
    assert names["Graph may reset passwords"] is Status.fail
    assert names["Graph may revoke sign-in sessions"] is Status.fail
    assert names["Graph may read users"] is Status.ok


def test_a_wrong_organization_fails_the_session(sandbox: SandboxServer) -> None:
    """Connect-ExchangeOnline refuses a vanity domain for app-only sign-in; doctor says what to check."""
    settings = sandbox_settings(sandbox)
    object.__setattr__(settings, "tenant_organization", "contoso.com")  # past the service's own check, on purpose
    doctor = Doctor(settings, timeout=10)
    doctor.run()
    session = next(c for c in doctor.checks if c.name == "session")
    assert session.status is Status.fail
    assert "initial domain" in session.detail
    assert "onmicrosoft" in session.fix


def test_an_endpoint_that_does_not_answer_fails_first(sandbox: SandboxServer) -> None:
    doctor = _doctor(sandbox, ps_port=1)
    assert [(c.name, c.status) for c in doctor.checks] == [("endpoint", Status.fail)]


def test_the_cli_prints_a_table_or_json_and_exits_1_on_failure(sandbox: SandboxServer) -> None:
    """`unblock doctor` with the service's settings: exit 0 and a table; with a hidden command exit 1, named."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNBLOCK_")} | sandbox_env(sandbox.port)
    ok = subprocess.run([UNBLOCK, "doctor"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "all checks passed" in ok.stdout
    sandbox.tenant.configure({"denied_cmdlets": ["Revoke-MgUserSignInSession"]})
    bad = subprocess.run(
        [UNBLOCK, "doctor", "--json"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert bad.returncode == 1
    answer = json.loads(bad.stdout)
    assert answer["passed"] is False
    assert [c["name"] for c in answer["checks"] if c["status"] == "fail"] == ["command Revoke-MgUserSignInSession"]
