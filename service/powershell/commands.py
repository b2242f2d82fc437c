"""Every remote command the bridge can run, with the only parameter names it may bind.

This catalogue is the single source of truth for what the service asks of the runner host:
the bridge builds every invocation from it (an undeclared parameter raises before anything is
sent), and the tests compare it with the JEA role capability in ``ps_scripts/`` so that the
endpoint exposes exactly these commands and parameters, no more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    parameters: tuple[str, ...]
    bootstrap: bool = False  # run once per runspace by the bridge, not exposed by the JEA endpoint
    direct: bool = False  # used only against a full endpoint; the runner endpoint has a safer wrapper
    runner: bool = False  # a wrapper function of the UnblockRunner module (the JEA endpoint only)

    def __call__(self, **values: Any) -> Invocation:
        unknown = set(values) - set(self.parameters)
        if unknown:
            raise ValueError(f"{self.name} has no parameter {sorted(unknown)[0]} in the catalogue")
        return Invocation(self, tuple(values.items()))


@dataclass(frozen=True, slots=True)
class Invocation:
    """One named command with bound parameter values (never script text)."""

    command: Command
    values: tuple[tuple[str, Any], ...]

    @property
    def name(self) -> str:
        return self.command.name


CONNECT_EXCHANGE = Command(
    "Connect-ExchangeOnline",
    ("AppId", "CertificateThumbprint", "Organization", "ShowBanner", "CommandName", "SkipLoadingFormatData"),
    bootstrap=True,
)
CONNECT_GRAPH = Command(
    "Connect-MgGraph", ("ClientId", "CertificateThumbprint", "TenantId", "NoWelcome"), bootstrap=True
)

GET_ACCEPTED_DOMAIN = Command("Get-AcceptedDomain", ())
GET_BLOCKED_SENDER = Command("Get-BlockedSenderAddress", ("SenderAddress",))
REMOVE_BLOCKED_SENDER = Command("Remove-BlockedSenderAddress", ("SenderAddress", "Reason", "Confirm"))
SET_MAILBOX = Command(
    "Set-Mailbox",
    ("Identity", "ForwardingSmtpAddress", "ForwardingAddress", "DeliverToMailboxAndForward", "Confirm"),
    direct=True,
)
# The runner module's wrappers. Update-MgUser takes the password in clear inside a hashtable, which a
# JEA transcript would record; the wrapper takes a SecureString. Set-Mailbox's forwarding parameters
# must be $null, which JEA cannot constrain; the wrapper takes only the mailbox.
SET_RUNNER_PASSWORD = Command(
    "Set-UnblockUserPassword", ("UserId", "NewPassword", "ForceChangePasswordNextSignIn"), runner=True
)
CLEAR_RUNNER_FORWARDING = Command("Clear-UnblockForwarding", ("Identity",), runner=True)
GET_INBOX_RULE = Command("Get-InboxRule", ("Mailbox",))
DISABLE_INBOX_RULE = Command("Disable-InboxRule", ("Mailbox", "Identity", "Confirm"))
GET_MG_USER = Command("Get-MgUser", ("UserId", "Property"))
UPDATE_MG_USER = Command("Update-MgUser", ("UserId", "PasswordProfile"), direct=True)
REVOKE_SESSIONS = Command("Revoke-MgUserSignInSession", ("UserId",))
GET_AD_USER = Command("Get-ADUser", ("LDAPFilter",))
SET_AD_PASSWORD = Command("Set-ADAccountPassword", ("Reset", "NewPassword", "PassThru"))
SET_AD_USER = Command("Set-ADUser", ("ChangePasswordAtLogon", "PassThru"))

CATALOGUE: tuple[Command, ...] = (
    CONNECT_EXCHANGE,
    CONNECT_GRAPH,
    GET_ACCEPTED_DOMAIN,
    GET_BLOCKED_SENDER,
    REMOVE_BLOCKED_SENDER,
    SET_MAILBOX,
    GET_INBOX_RULE,
    DISABLE_INBOX_RULE,
    GET_MG_USER,
    UPDATE_MG_USER,
    REVOKE_SESSIONS,
    GET_AD_USER,
    SET_AD_PASSWORD,
    SET_AD_USER,
    SET_RUNNER_PASSWORD,
    CLEAR_RUNNER_FORWARDING,
)

#: The Exchange cmdlets a runspace loads (Connect-ExchangeOnline -CommandName): only what we call.
EXCHANGE_COMMANDS: tuple[str, ...] = (
    GET_ACCEPTED_DOMAIN.name,
    GET_BLOCKED_SENDER.name,
    REMOVE_BLOCKED_SENDER.name,
    SET_MAILBOX.name,
    GET_INBOX_RULE.name,
    DISABLE_INBOX_RULE.name,
)

#: What the JEA endpoint must make visible: no connects, and the wrappers instead of what they wrap.
RUNNER_COMMANDS: tuple[Command, ...] = tuple(c for c in CATALOGUE if not c.bootstrap and not c.direct)
#: What a full endpoint (in-session connects) is asked to run.
DIRECT_COMMANDS: tuple[Command, ...] = tuple(c for c in CATALOGUE if not c.runner)


def ldap_escape(value: str) -> str:
    """RFC 4515 escaping, so an address can never change the meaning of an LDAP filter."""
    out: list[str] = []
    for char in value:
        if char in "*()\\\x00" or ord(char) < 0x20 or ord(char) > 0x7E:
            out.extend(f"\\{byte:02x}" for byte in char.encode("utf-8"))
        else:
            out.append(char)
    return "".join(out)
