"""``unblock doctor``: check a PowerShell endpoint before the first real case.

With the service's own settings it connects the way the worker does (whatever session
configuration is set, JEA included), asks the endpoint which commands it has and with which
parameters (PSRP GetCommandMetadata), runs read-only probes, reads the application's Graph
permissions where the endpoint lets it, and says for each check what to do. Nothing here
changes the tenant: every command it runs is a Get.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from service.config import PasswordBackend, Settings, is_guid
from service.errors import BridgeError, MailboxNotFound, PermissionDenied
from service.powershell import commands as c
from service.powershell.classify import classify
from service.powershell.runspace import EndpointOptions, RawResult, Runspace, RunspaceFailure, ping, properties


class Status(StrEnum):
    ok = "ok"
    warn = "warn"
    fail = "fail"
    skip = "skip"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}


@dataclass(frozen=True, slots=True)
class Need:
    """A command the service will call, and whether a missing one stops every case or only some."""

    command: c.Command
    required: bool
    why: str


#: Graph application permissions that allow each call (Microsoft Graph permissions reference and
#: the API pages named below; the least privileged first). A directory role that may act on the
#: target is needed too for the writes, and cannot be read from here.
GRAPH_PERMISSIONS: dict[str, tuple[str, ...]] = {
    "reset passwords": ("User-PasswordProfile.ReadWrite.All", "User.ReadWrite.All", "Directory.ReadWrite.All"),
    "revoke sign-in sessions": ("User.RevokeSessions.All", "User.ReadWrite.All", "Directory.ReadWrite.All"),
    "read users": ("User.Read.All", "User.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All"),
    # The investigation's reads (INVESTIGATION_PERMISSIONS), application permissions as listed on:
    # "List methods", learn.microsoft.com/graph/api/authentication-list-methods (acting on other users);
    "read sign-in methods": ("UserAuthenticationMethod.Read.All", "UserAuthenticationMethod.ReadWrite.All"),
    # "List oauth2PermissionGrants", learn.microsoft.com/graph/api/oauth2permissiongrant-list;
    "read app consents": ("Directory.Read.All", "DelegatedPermissionGrant.ReadWrite.All", "Directory.ReadWrite.All"),
    # "Get servicePrincipal", learn.microsoft.com/graph/api/serviceprincipal-get.
    "read apps": (
        "Application.Read.All",
        "Application.ReadWrite.OwnedBy",
        "Application.ReadWrite.All",
        "Directory.Read.All",
    ),
}
#: Checked only when the service investigates (UNBLOCK_CONTAINMENT is not off).
INVESTIGATION_PERMISSIONS: frozenset[str] = frozenset({"read sign-in methods", "read app consents", "read apps"})

PROBE_ADDRESS = "unblock-doctor-probe"
#: The object id the app-consent and app probes ask for when the probe address has no user: a
#: made-up GUID, expected to name no object, so the reads find nothing and show only whether they
#: are allowed.
PROBE_OBJECT_ID = "00000000-0000-4000-8000-00000d0c7042"


def investigates(settings: Settings) -> bool:
    """Does the service read the mailbox and account before it acts (UNBLOCK_CONTAINMENT not off)?"""
    return settings.containment != "off"


def needs(settings: Settings) -> list[Need]:
    """What the configured service will run on this endpoint."""
    jea = settings.ps_runner_functions
    out = [
        Need(c.GET_ACCEPTED_DOMAIN, True, "validates mailboxes against the tenant's domains"),
        Need(c.GET_BLOCKED_SENDER, True, "looks the sender up on the restricted list"),
        Need(c.REMOVE_BLOCKED_SENDER, True, "unblocks the sender"),
        Need(c.GET_MG_USER, True, "checks the user exists and whether it is synchronised from AD"),
        Need(c.REVOKE_SESSIONS, True, "revokes the user's sign-in sessions"),
    ]
    if settings.password_backend is PasswordBackend.ad:
        out += [
            Need(c.GET_AD_USER, True, "finds the on-premises account"),
            Need(c.SET_AD_PASSWORD, True, "resets the password in AD"),
            Need(c.SET_AD_USER, True, "makes the user change it at sign-in"),
        ]
    else:
        out.append(Need(c.SET_RUNNER_PASSWORD if jea else c.UPDATE_MG_USER, True, "resets the password"))
    if investigates(settings):
        # Every case reads all of these first; one refused read fails the investigation.
        out += [
            Need(c.GET_INBOX_RULE, True, "reads inbox rules, hidden ones included (investigation)"),
            Need(c.GET_MAILBOX, True, "reads the mailbox's forwarding (investigation)"),
            Need(c.GET_MAILBOX_PERMISSION, True, "reads who has FullAccess to the mailbox (investigation)"),
            Need(c.GET_RECIPIENT_PERMISSION, True, "reads who may send as the mailbox (investigation)"),
            Need(c.GET_AUTH_METHODS, True, "reads the user's sign-in methods (investigation)"),
            Need(c.GET_OAUTH_GRANTS, True, "reads the user's app consents (investigation)"),
            Need(c.GET_SERVICE_PRINCIPAL, True, "reads the apps those consents name (investigation)"),
        ]
    else:
        out += [
            Need(c.GET_INBOX_RULE, False, "reads inbox rules (cases with disable_suspicious_inbox_rules)"),
            Need(c.GET_MAILBOX, False, "reads forwarding before and after removing it (cases with remove_forwarding)"),
        ]
    out += [
        Need(c.DISABLE_INBOX_RULE, False, "disables suspicious inbox rules"),
        Need(c.CLEAR_RUNNER_FORWARDING if jea else c.SET_MAILBOX, False, "removes forwarding"),
    ]
    return out


def _error_of(result: RawResult, cmdlet: str) -> BridgeError | None:
    relevant = [r for r in result.records if r.terminating] or result.records
    return classify(relevant[0], cmdlet=cmdlet).error if relevant else None


class Doctor:
    """Runs the checks in order; a failure to connect skips everything that needs a session."""

    def __init__(self, settings: Settings, *, timeout: float = 60.0, mailbox: str | None = None) -> None:
        self.settings = settings
        self.options = EndpointOptions.from_settings(settings)
        self.timeout = timeout
        self.mailbox = mailbox
        self.checks: list[Check] = []
        self.domains: list[str] = []

    def add(self, name: str, status: Status, detail: str, fix: str = "") -> None:
        self.checks.append(Check(name, status, detail, fix))

    @property
    def passed(self) -> bool:
        return all(check.status is not Status.fail for check in self.checks)

    def run(self) -> list[Check]:
        o = self.options
        if not self.settings.ps_server:
            # A stored tenant without an endpoint of its own, under settings that name none: the
            # options would fall back to localhost, and a check of that would say nothing true.
            self.add(
                "endpoint",
                Status.fail,
                "no PowerShell endpoint is set for this tenant",
                "set UNBLOCK_PS_SERVER, or give the tenant its own (tenants add --ps-server)",
            )
            return self.checks
        where = f"{'https' if o.ssl else 'http'}://{o.server}:{o.port}/{o.path} ({o.configuration_name})"
        if not ping(o, min(self.timeout, 10)):
            self.add(
                "endpoint",
                Status.fail,
                f"{where} does not answer",
                "check UNBLOCK_PS_SERVER, _PORT, _SSL and that WinRM listens there (docs/runner-host.md)",
            )
            return self.checks
        self.add("endpoint", Status.ok, f"{where} answers")
        runspace = Runspace(o, name="doctor")
        try:
            runspace.open(time.monotonic() + self.timeout)
        except RunspaceFailure as failure:
            self.add("session", Status.fail, failure.error.message, _session_fix(self.settings))
            return self.checks
        try:
            signed_in = "connected in-session (Connect-ExchangeOnline, Connect-MgGraph)"
            self.add("session", Status.ok, signed_in if o.connect_in_session else "opened; the endpoint signs in")
            self._commands(runspace)
            self._probes(runspace)
            self._permissions(runspace)
        finally:
            runspace.close()
        return self.checks

    # --- commands and parameters -------------------------------------------------------------------

    def _commands(self, runspace: Runspace) -> None:
        wanted = needs(self.settings)
        offered = runspace.command_metadata([need.command.name for need in wanted])
        for need in wanted:
            name = need.command.name
            parameters = offered.get(name.lower())
            failing = Status.fail if need.required else Status.warn
            if parameters is None:
                self.add(
                    f"command {name}",
                    failing,
                    f"missing from the endpoint; the service {need.why}",
                    _missing_fix(self.settings, name),
                )
                continue
            absent = [p for p in need.command.parameters if p.lower() not in parameters]
            if absent:
                self.add(
                    f"command {name}",
                    failing,
                    f"has no parameter {', '.join('-' + p for p in absent)}",
                    "update the module on the runner host, and the role capability (ps_scripts/UnblockRunner.psrc)",
                )
                continue
            self.add(
                f"command {name}", Status.ok, f"present with {', '.join(need.command.parameters) or 'no'} parameters"
            )

    # --- read-only probes ----------------------------------------------------------------------------

    def _call(self, runspace: Runspace, invocation: c.Invocation) -> tuple[RawResult | None, BridgeError | None]:
        try:
            result = runspace.invoke((invocation,), time.monotonic() + self.timeout)
            runspace.finish()
        except RunspaceFailure as failure:
            return None, failure.error
        return result, _error_of(result, invocation.name)

    def _probe(
        self,
        runspace: Runspace,
        name: str,
        invocation: c.Invocation,
        describe: Callable[[RawResult], str],
        *,
        not_found_is_ok: bool = False,
        missing: str = "the probe address does not exist",
    ) -> RawResult | None:
        result, error = self._call(runspace, invocation)
        if error is None and result is not None:
            self.add(name, Status.ok, describe(result))
            return result
        if isinstance(error, MailboxNotFound) and not_found_is_ok:
            self.add(name, Status.ok, f"the read is allowed ({missing})")
            return result
        fix = (
            "grant the role or permission this read needs (docs/runner-host.md, 'Permissions')"
            if isinstance(error, PermissionDenied)
            else "see the message; the runner host's transcript has the details"
        )
        self.add(name, Status.fail, error.message if error else "no answer", fix)
        return None

    def _probes(self, runspace: Runspace) -> None:
        domains = self._probe(
            runspace,
            "read Get-AcceptedDomain",
            c.GET_ACCEPTED_DOMAIN(),
            lambda r: f"{len(r.output)} accepted domain(s): {', '.join(_domains(r))}",
        )
        self.domains = _domains(domains) if domains else []
        allowed = self.settings.allowed_domains
        if allowed and self.domains:
            foreign = [d for d in allowed if d not in self.domains]
            if foreign:
                self.add(
                    "UNBLOCK_ALLOWED_DOMAINS",
                    Status.fail,
                    f"not accepted domains of this tenant: {', '.join(foreign)}",
                    "list only domains the tenant accepts (Get-AcceptedDomain)",
                )
        domain = (allowed or self.domains or ["contoso.com"])[0]
        probe = self.mailbox or f"{PROBE_ADDRESS}@{domain}"
        self._probe(
            runspace,
            "read Get-BlockedSenderAddress",
            c.GET_BLOCKED_SENDER(SenderAddress=probe),
            lambda r: f"{probe}: {'restricted' if r.output else 'not restricted'}",
        )
        user = self._probe(
            runspace,
            "read Get-MgUser",
            c.GET_MG_USER(UserId=probe, Property=list(c.USER_PROPERTIES)),
            lambda r: f"{probe}: found",
            not_found_is_ok=True,
        )
        if self.settings.password_backend is PasswordBackend.ad:
            self._probe(
                runspace,
                "read Get-ADUser",
                c.GET_AD_USER(LDAPFilter=f"(userPrincipalName={c.ldap_escape(probe)})"),
                lambda r: f"{probe}: {'found' if r.output else 'no such account (the read is allowed)'}",
            )
        if investigates(self.settings):
            self._investigation_probes(runspace, probe, _object_id(user))

    def _investigation_probes(self, runspace: Runspace, probe: str, object_id: str | None) -> None:
        """The investigation's reads, as a case runs them (the probe address usually has no mailbox)."""
        self._probe(
            runspace,
            "read Get-InboxRule",
            c.GET_INBOX_RULE(Mailbox=probe, IncludeHidden=True),
            lambda r: f"{probe}: {len(r.output)} inbox rule(s), hidden ones included",
            not_found_is_ok=True,
        )
        self._probe(
            runspace,
            "read Get-Mailbox",
            c.GET_MAILBOX(Identity=probe),
            lambda r: f"{probe}: {'found' if r.output else 'no mailbox (the read is allowed)'}",
            not_found_is_ok=True,
        )
        self._probe(
            runspace,
            "read Get-MailboxPermission",
            c.GET_MAILBOX_PERMISSION(Identity=probe),
            lambda r: f"{probe}: {len(r.output)} permission entr{'y' if len(r.output) == 1 else 'ies'}",
            not_found_is_ok=True,
        )
        self._probe(
            runspace,
            "read Get-RecipientPermission",
            c.GET_RECIPIENT_PERMISSION(Identity=probe),
            lambda r: f"{probe}: {len(r.output)} Send As entr{'y' if len(r.output) == 1 else 'ies'}",
            not_found_is_ok=True,
        )
        self._probe(
            runspace,
            "read Get-MgUserAuthenticationMethod",
            c.GET_AUTH_METHODS(UserId=probe, All=True),
            lambda r: f"{probe}: {len(r.output)} sign-in method(s)",
            not_found_is_ok=True,
        )
        principal = object_id or PROBE_OBJECT_ID
        self._probe(
            runspace,
            "read Get-MgOauth2PermissionGrant",
            c.GET_OAUTH_GRANTS(Filter=f"principalId eq '{principal}'", All=True),
            lambda r: f"{'the probe user' if object_id else 'an unused object id'}: {len(r.output)} app consent(s)",
            not_found_is_ok=True,
        )
        self._probe(
            runspace,
            "read Get-MgServicePrincipal",
            c.GET_SERVICE_PRINCIPAL(ServicePrincipalId=PROBE_OBJECT_ID, Property=list(c.SERVICE_PRINCIPAL_PROPERTIES)),
            lambda r: f"{len(r.output)} service principal(s) with the probe's object id",
            not_found_is_ok=True,
            missing="no service principal has the probe's object id",
        )

    # --- what the signed-in application may do ------------------------------------------------------

    def _permissions(self, runspace: Runspace) -> None:
        if not self.options.connect_in_session:
            self.add(
                "Graph permissions",
                Status.skip,
                "not readable through this endpoint (Get-MgContext is not exposed by the role capability)",
                "check the app registration's API permissions: docs/runner-host.md, 'Permissions'",
            )
            return
        result, error = self._call(runspace, c.GET_MG_CONTEXT())
        if error is not None or result is None or not result.output:
            self.add(
                "Graph permissions", Status.skip, f"could not read them: {error.message if error else 'no context'}"
            )
            return
        granted = {str(s) for s in (properties(result.output[0]).get("Scopes") or [])}
        wanted = dict(GRAPH_PERMISSIONS)
        if self.settings.password_backend is PasswordBackend.ad:
            wanted.pop("reset passwords")
        if not investigates(self.settings):
            for action in INVESTIGATION_PERMISSIONS:
                wanted.pop(action)
        for action, options in wanted.items():
            have = [p for p in options if p in granted]
            if have:
                self.add(f"Graph may {action}", Status.ok, f"granted {have[0]}")
            else:
                self.add(
                    f"Graph may {action}",
                    Status.fail,
                    f"none of {', '.join(options)} is granted to the application",
                    f"grant {options[0]} (application permission, admin consent) to the app registration",
                )


def _object_id(result: RawResult | None) -> str | None:
    """The probe user's object id from Get-MgUser, lower-cased, when it is a GUID."""
    if result is None or not result.output:
        return None
    value = str(properties(result.output[0]).get("Id") or "").strip().lower()
    return value if is_guid(value) else None


def _domains(result: RawResult | None) -> list[str]:
    if result is None:
        return []
    out = []
    for obj in result.output:
        p = properties(obj)
        out.append(str(p.get("DomainName") or p.get("Name") or "").lower())
    return [d for d in out if d]


def _session_fix(settings: Settings) -> str:
    if settings.ps_connect_in_session:
        return (
            "check UNBLOCK_TENANT_ORGANIZATION (the .onmicrosoft.com domain), _APP_ID and _CERT_THUMBPRINT, and that "
            "the certificate is in the runner account's store"
        )
    return "check the session configuration's startup script and its sign-in (docs/runner-host.md)"


def _missing_fix(settings: Settings, name: str) -> str:
    if settings.ps_configuration_name.lower() != "microsoft.powershell":
        return f"add {name} to the role capability (ps_scripts/UnblockRunner.psrc) and re-register the endpoint"
    return f"assign the application a role that includes {name}, or load its module on the runner host"


def report(checks: list[Check]) -> list[dict[str, Any]]:
    return [check.as_dict() for check in checks]
