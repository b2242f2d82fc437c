"""Every remote command the bridge can run, with the only parameter names it may bind.

This catalogue is the single source of truth for what the service asks of the runner host:
the bridge builds every invocation from it (an undeclared parameter raises before anything is
sent), and the tests compare it with the JEA role capability in ``ps_scripts/`` so that the
endpoint exposes exactly these commands and parameters, no more. Every name here is in
Microsoft's documented syntax for that command (``service/reference/cmdlets.json``, which
names the reference page of each): tests/unit/test_reference.py binds every invocation the
bridge builds against it. Look a parameter up there before adding it.
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
    diagnostic: bool = False  # read by `unblock doctor` on a full endpoint only; the JEA endpoint does not offer it

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
# Documented as -SenderAddress [-Reason]: no ShouldProcess, so no -Confirm (it would be NamedParameterNotFound).
REMOVE_BLOCKED_SENDER = Command("Remove-BlockedSenderAddress", ("SenderAddress", "Reason"))
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
# -IncludeHidden adds the rules Outlook does not show (the system junk, delegate and out-of-office
# rules, and rules written straight to the mailbox); nothing marks them, so the bridge asks twice.
GET_INBOX_RULE = Command("Get-InboxRule", ("Mailbox", "IncludeHidden"))
# Investigation (read only): forwarding, delegates, Send As, sign-in methods, app consents.
GET_MAILBOX = Command("Get-Mailbox", ("Identity",))
GET_MAILBOX_PERMISSION = Command("Get-MailboxPermission", ("Identity",))
GET_RECIPIENT_PERMISSION = Command("Get-RecipientPermission", ("Identity",))
GET_AUTH_METHODS = Command("Get-MgUserAuthenticationMethod", ("UserId", "All"))
# App consents: GET /users/{id}/oauth2PermissionGrants (Get-MgUserOauth2PermissionGrant) documents no
# application permission, and the service signs in app-only; the tenant-wide list does (Directory.Read.All)
# and filters on principalId, the user's object id (a GUID the bridge checks before it builds the filter).
GET_OAUTH_GRANTS = Command("Get-MgOauth2PermissionGrant", ("Filter", "All"))
GET_SERVICE_PRINCIPAL = Command("Get-MgServicePrincipal", ("ServicePrincipalId", "Property"))
#: The only service-principal properties read (the JEA role capability allows exactly these).
SERVICE_PRINCIPAL_PROPERTIES: tuple[str, ...] = (
    "Id",
    "DisplayName",
    "AppId",
    "AppOwnerOrganizationId",
    "VerifiedPublisher",
)
# ShouldProcess (-Confirm:$false skips its built-in pause); -Force skips the prompt about removing the
# mailbox's Outlook client-side rules, which a remote session without a host cannot answer.
DISABLE_INBOX_RULE = Command("Disable-InboxRule", ("Mailbox", "Identity", "Force", "Confirm"))
GET_MG_USER = Command("Get-MgUser", ("UserId", "Property"))
#: The only user properties the service reads (the JEA role capability allows exactly these).
USER_PROPERTIES: tuple[str, ...] = ("Id", "UserPrincipalName", "OnPremisesSyncEnabled", "AccountEnabled")
# Read by `unblock doctor` only, on a full endpoint: the application's granted Graph permissions (Scopes).
GET_MG_CONTEXT = Command("Get-MgContext", (), diagnostic=True)
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
    GET_MAILBOX,
    GET_MAILBOX_PERMISSION,
    GET_RECIPIENT_PERMISSION,
    GET_AUTH_METHODS,
    GET_OAUTH_GRANTS,
    GET_SERVICE_PRINCIPAL,
    GET_MG_USER,
    GET_MG_CONTEXT,
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
    GET_MAILBOX.name,
    GET_MAILBOX_PERMISSION.name,
    GET_RECIPIENT_PERMISSION.name,
)

#: What the JEA endpoint must make visible: no connects, and the wrappers instead of what they wrap.
RUNNER_COMMANDS: tuple[Command, ...] = tuple(
    c for c in CATALOGUE if not c.bootstrap and not c.direct and not c.diagnostic
)


def ldap_escape(value: str) -> str:
    """RFC 4515 escaping, so an address can never change the meaning of an LDAP filter."""
    out: list[str] = []
    for char in value:
        if char in "*()\\\x00" or ord(char) < 0x20 or ord(char) > 0x7E:
            out.extend(f"\\{byte:02x}" for byte in char.encode("utf-8"))
        else:
            out.append(char)
    return "".join(out)
