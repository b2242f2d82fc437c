"""The service sends only what Microsoft documents: every invocation binds against the syntax table.

``service/reference/cmdlets.json`` is transcribed from Microsoft's published cmdlet reference
(each entry names its page). These tests run every bridge operation in every configuration the
service supports, record the pipelines it would send, and bind each command's parameter names
against that syntax the way PowerShell's binder does: an undocumented parameter, a -Confirm on a
command without ShouldProcess, or parameters from two parameter sets fail here instead of on the
first real tenant.
"""

from __future__ import annotations

from typing import Any, cast

import pytest

from service import reference
from service.config import Settings
from service.powershell import commands as c
from service.powershell.bridge import PowerShellBridge
from service.powershell.commands import Invocation
from service.powershell.runspace import EndpointOptions, RawResult, connect_invocations

ADDRESS = "o'brien.smith+it@contoso.com"


class RecordingPool:
    """Stands in for the warm pool: records what would be sent, answers with one empty object."""

    def __init__(self) -> None:
        self.pipelines: list[tuple[Invocation, ...]] = []

    async def call(self, invocations: tuple[Invocation, ...], *, limit: float | None = None) -> RawResult:
        self.pipelines.append(invocations)
        return RawResult(output=[object()], records=[], failed=False, warnings=[])

    async def close(self) -> None:
        return None


CONFIGURATIONS: dict[str, dict[str, Any]] = {
    "full endpoint, Graph": {},
    "full endpoint, AD": {"password_backend": "ad"},
    "JEA endpoint, Graph": {
        "ps_configuration_name": "UnblockRunner",
        "ps_connect_in_session": False,
        "ps_runner_functions": True,
    },
    "JEA endpoint, AD": {
        "password_backend": "ad",
        "ps_configuration_name": "UnblockRunner",
        "ps_connect_in_session": False,
        "ps_runner_functions": True,
    },
}


def _settings(**overrides: Any) -> Settings:
    return Settings(
        ps_server="runner.contoso.com",
        tenant_organization="contoso.onmicrosoft.com",
        tenant_app_id="11111111-2222-3333-4444-555555555555",
        tenant_cert_thumbprint="A" * 40,
        **overrides,
    )


async def _every_pipeline(settings: Settings) -> list[tuple[Invocation, ...]]:
    pool = RecordingPool()
    bridge = PowerShellBridge(settings, pool=cast(Any, pool))
    await bridge.get_restriction(ADDRESS)
    await bridge.list_restrictions()
    await bridge.remove_restriction(ADDRESS, reason="unblock-service case 0190c1d2 ticket INC-0042")
    await bridge.remove_restriction(ADDRESS)
    await bridge.accepted_domains()
    await bridge.list_inbox_rules(ADDRESS)
    await bridge.disable_inbox_rule(ADDRESS, "O'Brien, Rob\\16204938563291545601")
    await bridge.clear_forwarding(ADDRESS)
    await bridge.get_user(ADDRESS)
    await bridge.reset_password(ADDRESS, "Tmp-Pass-1234!", force_change=True)
    await bridge.revoke_sessions(ADDRESS)
    pipelines = list(pool.pipelines)
    if settings.ps_connect_in_session:
        pipelines += [(connect,) for connect in connect_invocations(EndpointOptions.from_settings(settings))]
    return pipelines


@pytest.mark.parametrize("configuration", sorted(CONFIGURATIONS))
async def test_every_invocation_binds_against_the_documented_syntax(configuration: str) -> None:
    """Each command the bridge sends, with the parameter names it binds, selects a documented parameter set."""
    pipelines = await _every_pipeline(_settings(**CONFIGURATIONS[configuration]))
    assert pipelines
    for pipeline in pipelines:
        for index, invocation in enumerate(pipeline):
            syntax = reference.command(invocation.name)
            names = [name for name, _ in invocation.values]
            for name in names:
                assert syntax.resolve(name).name == name, f"{invocation.name} -{name}: not its documented spelling"
            try:
                syntax.choose_set([n for n in names if not syntax.resolve(n).common], has_input=index > 0)
            except reference.BindingError as error:
                pytest.fail(f"{invocation.name} {' '.join('-' + n for n in names)}: {error.error_id}: {error.message}")


def test_every_catalogue_parameter_is_documented() -> None:
    """Every name the catalogue allows is a documented parameter of that command, or a common one it has."""
    for command in c.CATALOGUE:
        syntax = reference.command(command.name)
        for name in command.parameters:
            parameter = syntax.resolve(name)
            assert parameter.name == name, f"{command.name} -{name}"


def test_confirm_is_sent_only_to_commands_that_support_should_process() -> None:
    """-Confirm exists only where the reference shows ShouldProcess (so not on Remove-BlockedSenderAddress)."""
    for command in c.CATALOGUE:
        if "Confirm" in command.parameters:
            assert reference.command(command.name).should_process, command.name
    assert "Confirm" not in c.REMOVE_BLOCKED_SENDER.parameters


@pytest.mark.parametrize(
    ("command", "names", "error_id"),
    [
        ("Remove-BlockedSenderAddress", ["SenderAddress", "Confirm"], "NamedParameterNotFound"),
        ("Remove-BlockedSenderAddress", ["SenderAddress", "WhatIf"], "NamedParameterNotFound"),
        ("Get-BlockedSenderAddress", ["ResultSize"], "NamedParameterNotFound"),
        ("Remove-BlockedSenderAddress", ["Reason"], "MissingMandatoryParameter"),
        ("Get-MgUser", ["UserId", "Filter"], "AmbiguousParameterSet"),
        ("Connect-MgGraph", ["ClientId", "CertificateThumbprint", "Scopes"], "AmbiguousParameterSet"),
        ("Get-InboxRule", ["Mailbox", "Description"], "AmbiguousParameter"),
    ],
)
def test_the_binder_refuses_what_powershell_refuses(command: str, names: list[str], error_id: str) -> None:
    """The documented facts the issue names, and PowerShell's binder rules, refuse as PowerShell would."""
    with pytest.raises(reference.BindingError) as caught:
        reference.command(command).check(names)
    assert caught.value.error_id == error_id


@pytest.mark.parametrize(
    ("command", "names", "chosen"),
    [
        ("Get-MgUser", ["UserId", "Property"], "Get"),
        ("Get-MgUser", ["Filter", "All"], "List"),
        (
            "Connect-MgGraph",
            ["ClientId", "CertificateThumbprint", "TenantId", "NoWelcome"],
            "AppCertificateParameterSet",
        ),
        ("Update-MgUser", ["UserId", "PasswordProfile"], "UpdateExpanded"),
        ("Disable-InboxRule", ["Mailbox", "Identity", "Force", "Confirm", "ErrorAction"], reference.ALL_SETS),
        ("Get-ADUser", ["LDAPFilter"], "LdapFilter"),
    ],
)
def test_the_binder_picks_the_parameter_set_powershell_picks(command: str, names: list[str], chosen: str) -> None:
    assert reference.command(command).check(names) == chosen


def test_every_entry_names_its_source_and_is_well_formed() -> None:
    """A syntax entry is only as good as its source: each names a page; sets and positions are consistent."""
    for syntax in reference.syntax().values():
        assert syntax.url.startswith(("https://learn.microsoft.com/", "ps_scripts/")), syntax.name
        assert syntax.parameter_sets, syntax.name
        assert syntax.default_set in (None, *syntax.parameter_sets), syntax.name
        names = [p.name.lower() for p in syntax.parameters]
        assert len(names) == len(set(names)), f"{syntax.name}: a parameter listed twice"
        assert not set(names) & {"confirm", "whatif"}, f"{syntax.name}: ShouldProcess is a flag, not a parameter"
        for parameter in syntax.parameters:
            for set_name in parameter.sets:
                assert set_name == reference.ALL_SETS or set_name in syntax.parameter_sets, (syntax.name, set_name)
