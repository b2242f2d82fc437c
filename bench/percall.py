"""The baseline: how many automation tools reach PowerShell, one fresh connection per command.

For every command: open a new remoting shell (a pypsrp RunspacePool), sign in to the module the
command belongs to (Connect-ExchangeOnline or Connect-MgGraph), run the one command, close the
shell. The commands and their parameters are the ones the service sends for the same case, built
from the same catalogue, so the only difference measured is the connection strategy.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from service.domain.password import generate_password
from service.powershell import commands as c
from service.powershell.runspace import EndpointOptions, Runspace

_APP_ID = "11111111-2222-3333-4444-555555555555"
_THUMBPRINT = "A" * 40
_ORG = "contoso.onmicrosoft.com"

_BUILD: dict[str, Callable[[str], c.Invocation]] = {
    c.UPDATE_MG_USER.name: lambda upn: c.UPDATE_MG_USER(
        UserId=upn, PasswordProfile={"Password": generate_password(), "ForceChangePasswordNextSignIn": True}
    ),
    c.REVOKE_SESSIONS.name: lambda upn: c.REVOKE_SESSIONS(UserId=upn),
    c.GET_MG_USER.name: lambda upn: c.GET_MG_USER(UserId=upn, Property=["Id", "UserPrincipalName"]),
    c.GET_BLOCKED_SENDER.name: lambda upn: c.GET_BLOCKED_SENDER(SenderAddress=upn),
    c.REMOVE_BLOCKED_SENDER.name: lambda upn: c.REMOVE_BLOCKED_SENDER(SenderAddress=upn, Reason="baseline"),
    c.GET_ACCEPTED_DOMAIN.name: lambda upn: c.GET_ACCEPTED_DOMAIN(),
    # the investigation's reads, as the bridge sends them (the consent read with a made-up object id)
    c.GET_INBOX_RULE.name: lambda upn: c.GET_INBOX_RULE(Mailbox=upn, IncludeHidden=True),
    c.GET_MAILBOX.name: lambda upn: c.GET_MAILBOX(Identity=upn),
    c.GET_MAILBOX_PERMISSION.name: lambda upn: c.GET_MAILBOX_PERMISSION(Identity=upn),
    c.GET_RECIPIENT_PERMISSION.name: lambda upn: c.GET_RECIPIENT_PERMISSION(Identity=upn),
    c.GET_AUTH_METHODS.name: lambda upn: c.GET_AUTH_METHODS(UserId=upn, All=True),
    c.GET_OAUTH_GRANTS.name: lambda upn: c.GET_OAUTH_GRANTS(
        Filter="principalId eq '00000000-0000-0000-0000-000000000000'", All=True
    ),
}


def _options(port: int) -> EndpointOptions:
    return EndpointOptions(
        server="127.0.0.1",
        port=port,
        ssl=False,
        path="wsman",
        auth="basic",
        username="sandbox",
        password="sandbox",
        cert_validation=False,
        encryption="never",
        configuration_name="Microsoft.PowerShell",
        operation_timeout=5,
        connect_in_session=False,  # connected below, per command
        organization=_ORG,
        app_id=_APP_ID,
        cert_thumbprint=_THUMBPRINT,
        tenant_id=_ORG,
        exchange_keys=False,
    )


def _connect_for(cmdlet: str) -> c.Invocation:
    if cmdlet in c.EXCHANGE_COMMANDS:
        return c.CONNECT_EXCHANGE(
            AppId=_APP_ID,
            CertificateThumbprint=_THUMBPRINT,
            Organization=_ORG,
            ShowBanner=False,
            CommandName=[cmdlet],
            SkipLoadingFormatData=True,
        )
    return c.CONNECT_GRAPH(ClientId=_APP_ID, CertificateThumbprint=_THUMBPRINT, TenantId=_ORG, NoWelcome=True)


def run_case(port: int, upn: str, sequence: list[str]) -> float:
    """Run the case's commands one connection each; returns the seconds it took."""
    options = _options(port)
    started = time.perf_counter()
    for number, cmdlet in enumerate(sequence):
        runspace = Runspace(options, name=f"baseline-{number}")
        deadline = time.monotonic() + 60
        runspace.open(deadline)
        try:
            for invocation in (_connect_for(cmdlet), _BUILD[cmdlet](upn)):
                result = runspace.invoke((invocation,), deadline)
                runspace.finish()
                if result.failed:
                    raise RuntimeError(f"{invocation.name} failed in the baseline: {result.records}")
        finally:
            runspace.close()
    return time.perf_counter() - started


def warm_sequence(port: int, upn: str, sequence: list[str]) -> float:
    """The floor under the service: the case's commands one after another on one warm runspace.

    Signed in to both modules once, before the clock starts; then each command is sent, its result
    read and the pipeline finished, as the pool does, with nothing else in between (no database,
    no decisions, no HTTP API). Returns the seconds the sequence took.
    """
    options = _options(port)
    runspace = Runspace(options, name="floor")
    deadline = time.monotonic() + 120
    runspace.open(deadline)
    try:
        exchange = sorted({cmdlet for cmdlet in sequence if cmdlet in c.EXCHANGE_COMMANDS})
        connect_exchange = c.CONNECT_EXCHANGE(
            AppId=_APP_ID,
            CertificateThumbprint=_THUMBPRINT,
            Organization=_ORG,
            ShowBanner=False,
            CommandName=exchange,
            SkipLoadingFormatData=True,
        )
        for connect in (connect_exchange, _connect_for(c.GET_MG_USER.name)):
            runspace.invoke((connect,), deadline)
            runspace.finish()
        started = time.perf_counter()
        for cmdlet in sequence:
            result = runspace.invoke((_BUILD[cmdlet](upn),), deadline)
            runspace.finish()
            if result.failed:
                raise RuntimeError(f"{cmdlet} failed in the floor run: {result.records}")
        return time.perf_counter() - started
    finally:
        runspace.close()
