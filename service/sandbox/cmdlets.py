"""The commands the sandbox emulates: what each does to the tenant, and what it returns.

Which parameters a command has, and how they bind, is not decided here: every command is
bound against Microsoft's documented syntax (``service/reference/cmdlets.json``) by
:mod:`service.sandbox.binding`. Each command reads and writes the
:class:`~service.sandbox.tenant.Tenant` and returns output objects carrying the real type
names and properties.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from psrpcore.types import PSCustomObject, PSDateTime, PSSecureString

from service import reference
from service.config import is_guid, is_thumbprint
from service.reference import CommandSyntax, ParameterSyntax
from service.sandbox import records
from service.sandbox.records import CmdletError
from service.sandbox.tenant import (
    AuthMethod,
    BlockedSender,
    InboxRule,
    MailboxPermission,
    OAuthGrant,
    SendAs,
    ServicePrincipal,
    Tenant,
    Tenants,
    User,
    now_utc,
    sha256,
)


@dataclass
class Runspace:
    """Per-runspace module state: what Connect-ExchangeOnline / Connect-MgGraph left behind.

    Which tenant a command runs against (:func:`tenant_for`): each module is connected to the
    tenant it was given, as the real ExchangeOnlineManagement and Microsoft.Graph modules are, each
    with a sign-in of its own; a runspace *may* have Exchange connected to one tenant and Graph to
    another (nothing refuses it: neither module knows of the other), and then each command runs
    against its own module's tenant. ``tenant`` is the runspace's own: on a JEA endpoint the one its
    configuration serves (every command runs against it), elsewhere the first tenant until a
    Connect-* names another, then the last one named; the commands of neither module (AD, Get-Command)
    and commands of a module not connected (which fail) are the runspace's, for faults, config and
    the call log.
    """

    shell_id: str
    index: int
    tenant: Tenant
    exo_tenant: Tenant | None = None  # Connect-ExchangeOnline -Organization
    exo_commands: frozenset[str] | None = None  # Connect-ExchangeOnline -CommandName
    graph_tenant: Tenant | None = None  # Connect-MgGraph -TenantId
    graph_client_id: str = ""
    calls: int = 0
    expired: bool = False  # the session_expired fault: the sign-ins this runspace had are gone

    @property
    def name(self) -> str:
        return f"{self.shell_id}/{self.index}"

    @property
    def exo_connected(self) -> bool:
        return self.exo_tenant is not None

    @property
    def graph_connected(self) -> bool:
        return self.graph_tenant is not None

    def expire(self) -> None:
        """Forget the Exchange and Graph sign-ins, as when their tokens lapse and cannot be renewed."""
        self.exo_tenant = None
        self.exo_commands = None
        self.graph_tenant = None
        self.expired = True


def tenant_for(runspace: Runspace, name: str, *, jea: bool) -> Tenant:
    """The tenant the command ``name`` runs against in this runspace (see :class:`Runspace`)."""
    if jea:
        return runspace.tenant
    cmdlet = CMDLETS.get(name.lower())
    if cmdlet is None or cmdlet.module in ("ad", "core"):
        return runspace.exo_tenant or runspace.graph_tenant or runspace.tenant
    if cmdlet.family == "graph":
        return runspace.graph_tenant or runspace.tenant
    return runspace.exo_tenant or runspace.tenant


def hidden_in(runspace: Runspace, *, jea: bool) -> Callable[[str], bool]:
    """Whether a command is denied here: by the config of the tenant it would run against."""
    return lambda name: tenant_for(runspace, name, jea=jea).config.hides(name)


def named_tenant(cmdlet: Cmdlet, bound: dict[str, Any], tenants: Tenants) -> Tenant | None:
    """The tenant a Connect-* command names, when the sandbox has it (None for any other command)."""
    if cmdlet.name == "Connect-ExchangeOnline" and bound.get("Organization"):
        return tenants.by_organization(str(bound["Organization"]))
    if cmdlet.name == "Connect-MgGraph" and bound.get("TenantId"):
        return tenants.by_graph_tenant(str(bound["TenantId"]))
    return None


@dataclass
class Context:
    tenant: Tenant  # the one the command runs against (tenant_for; for a Connect-*, the one it names)
    runspace: Runspace
    jea: bool
    tenants: Tenants
    now: datetime = field(default_factory=now_utc)
    errors: list[records.ErrorSpec] = field(default_factory=list)
    information: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    progress: list[tuple[str, str, int]] = field(default_factory=list)

    def write_error(self, spec: records.ErrorSpec) -> None:
        self.errors.append(spec)


Run = Callable[[Context, dict[str, Any], list[Any]], list[Any]]


@dataclass(frozen=True)
class Cmdlet:
    name: str
    module: str  # "exo" | "exo-connect" | "graph" | "graph-connect" | "ad" | "runner" | "core"
    run: Run
    class_name: str
    graph_set: str = ""

    @property
    def syntax(self) -> CommandSyntax:
        """Microsoft's documented syntax for this command (the only parameters it binds)."""
        return reference.command(self.name)

    @property
    def family(self) -> str:
        """Which real module's behaviour this command follows: "exchange", "graph" or "ad"."""
        if self.module in ("graph", "graph-connect") or (self.module == "runner" and self.graph_set):
            return "graph"
        return "ad" if self.module == "ad" else "exchange"

    @property
    def binding_target(self) -> str:
        """What PowerShell names in a binding error's id: the class of a compiled cmdlet (the AD module),
        the command name of a function (Exchange Online v3, Graph and the runner module's commands)."""
        return self.class_name if self.compiled else self.name

    @property
    def compiled(self) -> bool:
        """A compiled cmdlet (the AD module, Microsoft.Graph.Authentication, PowerShell's own), not a function."""
        return self.module in ("ad", "core", "graph-connect")


# --- the call log ---------------------------------------------------------------------------------


def loggable(cmdlet: Cmdlet, bound: dict[str, Any]) -> dict[str, Any]:
    """Bound parameters as JSON, with every secret replaced by its SHA-256."""
    out: dict[str, Any] = {}
    for param in cmdlet.syntax.all_parameters():
        if param.name not in bound:
            continue
        value = bound[param.name]
        if param.type == "SecureString" and value is not None:
            out[param.name] = {"sha256": sha256(value)}
        elif isinstance(value, dict):
            out[param.name] = {
                k: ({"sha256": sha256(str(v))} if "password" in k.lower() and isinstance(v, str) else _plain(v))
                for k, v in value.items()
            }
        else:
            out[param.name] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value if not isinstance(value, bool) else bool(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, PSSecureString):
        return {"sha256": sha256(str(value.decrypt()))}
    identity = getattr(value, "UserPrincipalName", None) or getattr(value, "DistinguishedName", None)
    return f"<{type(value).__name__} {identity}>" if identity else f"<{type(value).__name__}>"


# --- output objects ------------------------------------------------------------------------------


def _obj(type_name: str, **props: Any) -> PSCustomObject:
    return PSCustomObject(PSTypeName=type_name, **props)


def _dt(value: datetime) -> PSDateTime:
    return PSDateTime(
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
        value.tzinfo,
    )


def _sender_obj(sender: BlockedSender) -> PSCustomObject:
    return _obj(
        "Microsoft.Exchange.Management.Hygiene.BlockedSenderAddress",
        Identity=sender.address,
        SenderAddress=sender.address,
        Reason=sender.reason,
        CreatedDatetime=_dt(sender.created),
        ChangedDatetime=_dt(sender.changed),
        TemporaryBlock=sender.temporary_block,
        IsValid=True,
    )


def _mailbox_obj(user: User) -> PSCustomObject:
    return _obj(
        "Microsoft.Exchange.Data.Directory.Management.Mailbox",
        Identity=user.display_name,
        Name=user.sam_account_name,
        DisplayName=user.display_name,
        UserPrincipalName=user.upn,
        PrimarySmtpAddress=user.upn,
        RecipientTypeDetails="UserMailbox",
        ForwardingSmtpAddress=user.forwarding_smtp_address,
        ForwardingAddress=user.forwarding_address,
        DeliverToMailboxAndForward=user.deliver_to_mailbox_and_forward,
        ExternalDirectoryObjectId=user.object_id,
    )


def _recipient(tenant: Tenant, address: str) -> str:
    """How Get-InboxRule prints a recipient: ``"Name" [EX:<legacyExchangeDN>]`` for one of the directory,
    ``"address" [SMTP:address]`` for anyone else."""
    user = tenant.find_user(address)
    if user is not None and user.has_mailbox:
        legacy_dn = f"/o=ExchangeLabs/ou=Exchange Administrative Group/cn=Recipients/cn={user.sam_account_name}"
        return f'"{user.display_name}" [EX:{legacy_dn}]'
    return f'"{address}" [SMTP:{address}]'


def _rule_obj(tenant: Tenant, user: User, rule: InboxRule, priority: int) -> PSCustomObject:
    def recipients(addresses: list[str]) -> list[str] | None:
        return [_recipient(tenant, a) for a in addresses] or None

    return _obj(
        "Microsoft.Exchange.Management.Common.InboxRule",
        Identity=f"{user.upn}\\{rule.rule_id}",
        RuleIdentity=rule.rule_id,
        Name=rule.name,
        Enabled=rule.enabled,
        Priority=priority,
        ForwardTo=recipients(rule.forward_to),
        ForwardAsAttachmentTo=recipients(rule.forward_as_attachment_to),
        RedirectTo=recipients(rule.redirect_to),
        DeleteMessage=rule.delete_message,
        SoftDeleteMessage=rule.soft_delete_message,
        MoveToFolder=f"{user.display_name}:\\{rule.move_to_folder}" if rule.move_to_folder else None,
        MarkAsRead=rule.mark_as_read,
        SubjectContainsWords=list(rule.subject_contains_words) or None,
        SubjectOrBodyContainsWords=list(rule.subject_or_body_contains_words) or None,
        BodyContainsWords=list(rule.body_contains_words) or None,
        MailboxOwnerId=user.display_name,
    )


def _mailbox_permission_obj(user: User, permission: MailboxPermission) -> PSCustomObject:
    return _obj(
        "Microsoft.Exchange.Management.RecipientTasks.MailboxAcePresentationObject",
        Identity=user.display_name,
        User=permission.user,
        AccessRights=list(permission.access_rights),
        IsInherited=permission.inherited,
        Deny=permission.deny,
        InheritanceType="All",
    )


def _send_as_obj(user: User, permission: SendAs) -> PSCustomObject:
    return _obj(
        "Microsoft.Exchange.Management.RecipientTasks.RecipientPermission",
        Identity=user.display_name,
        Trustee=permission.trustee,
        AccessControlType="Allow",
        AccessRights=["SendAs"],
        IsInherited=permission.inherited,
        InheritanceType="None",
    )


def _graph_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _auth_method_obj(method: AuthMethod) -> PSCustomObject:
    """The SDK's base type declares only Id; the rest of Graph's JSON lands in AdditionalProperties."""
    extra: dict[str, Any] = {"@odata.type": method.odata_type}
    if method.created is not None:
        extra["createdDateTime"] = _graph_time(method.created)
    extra.update(method.fields)
    return _obj(
        "Microsoft.Graph.PowerShell.Models.MicrosoftGraphAuthenticationMethod",
        Id=method.method_id,
        AdditionalProperties=extra,
    )


def _grant_obj(grant: OAuthGrant) -> PSCustomObject:
    return _obj(
        "Microsoft.Graph.PowerShell.Models.MicrosoftGraphOAuth2PermissionGrant",
        Id=grant.grant_id,
        ClientId=grant.client_id,
        ConsentType=grant.consent_type,
        PrincipalId=grant.principal_id,
        ResourceId=grant.resource_id,
        Scope=grant.scope,
    )


def _service_principal_obj(app: ServicePrincipal, selected: list[str] | None) -> PSCustomObject:
    """-Property asks Graph for those properties only ($select); the others come back empty."""
    publisher = (
        _obj(
            "Microsoft.Graph.PowerShell.Models.MicrosoftGraphVerifiedPublisher",
            DisplayName=app.verified_publisher,
            VerifiedPublisherId="1234567",
        )
        if app.verified_publisher
        else _obj(
            "Microsoft.Graph.PowerShell.Models.MicrosoftGraphVerifiedPublisher",
            DisplayName=None,
            VerifiedPublisherId=None,
        )
    )
    values: dict[str, Any] = {
        "Id": app.object_id,
        "DisplayName": app.display_name,
        "AppId": app.app_id,
        "AppOwnerOrganizationId": app.owner_tenant_id,
        "VerifiedPublisher": publisher,
    }
    wanted = {n.lower() for n in selected} if selected else None
    return _obj(
        "Microsoft.Graph.PowerShell.Models.MicrosoftGraphServicePrincipal",
        **{k: (v if wanted is None or k.lower() in wanted else None) for k, v in values.items()},
    )


def _graph_user_obj(user: User) -> PSCustomObject:
    return _obj(
        "Microsoft.Graph.PowerShell.Models.MicrosoftGraphUser",
        Id=user.object_id,
        UserPrincipalName=user.upn,
        DisplayName=user.display_name,
        Mail=user.upn if user.has_mailbox else None,
        AccountEnabled=user.account_enabled,
        OnPremisesSyncEnabled=True if user.on_premises_sync else None,
    )


def _ad_user_obj(user: User) -> PSCustomObject:
    given, _, surname = user.display_name.partition(" ")
    return _obj(
        "Microsoft.ActiveDirectory.Management.ADUser",
        DistinguishedName=user.distinguished_name,
        Enabled=user.account_enabled,
        GivenName=given,
        Surname=surname or None,
        Name=user.display_name,
        ObjectClass="user",
        ObjectGUID=user.object_id,
        SamAccountName=user.sam_account_name,
        UserPrincipalName=user.upn,
    )


# --- Exchange Online -------------------------------------------------------------------------------

EXO = "Microsoft.Exchange.Management"


def _connect_exchange(ctx: Context, p: dict[str, Any], _: list[Any]) -> list[Any]:
    """App-only certificate sign-in, as a remote session must use it (no browser, no prompt).

    Microsoft's reference: -AppId with one of -CertificateThumbprint, -Certificate or
    -CertificateFilePath, and -Organization set to the tenant's primary .onmicrosoft.com domain
    (a vanity domain is not accepted for app-only authentication).
    """
    has_cert = any(p.get(k) for k in ("CertificateThumbprint", "Certificate", "CertificateFilePath"))
    app_only = p.get("AppId") and has_cert and p.get("Organization")
    if not (app_only or (p.get("ManagedIdentity") and p.get("Organization"))):
        raise CmdletError(
            records.exo_connect_refused(
                "Interactive sign-in is not possible in a remote session. Use app-only authentication: "
                "-AppId, -Organization and one of -CertificateThumbprint, -Certificate or -CertificateFilePath."
            ),
            terminating=True,
        )
    if p.get("AppId") and not is_guid(str(p["AppId"])):
        raise CmdletError(
            records.exo_connect_refused(f"AppId '{p['AppId']}' is not an application (client) id: it is a GUID."),
            terminating=True,
        )
    if p.get("CertificateThumbprint") and not is_thumbprint(str(p["CertificateThumbprint"])):
        raise CmdletError(
            records.exo_connect_refused(
                f"'{p['CertificateThumbprint']}' is not a certificate thumbprint: it has 40 hexadecimal digits."
            ),
            terminating=True,
        )
    tenant = ctx.tenants.by_organization(str(p["Organization"]))
    if tenant is None:
        raise CmdletError(records.exo_connect_not_initial_domain(str(p["Organization"])), terminating=True)
    ctx.runspace.exo_tenant = ctx.runspace.tenant = tenant
    ctx.runspace.expired = False
    names = p.get("CommandName")
    ctx.runspace.exo_commands = frozenset(n.lower() for n in names) if names else None
    if p.get("ShowBanner", True):
        ctx.information.append("This V3 EXO PowerShell module contains new REST API backed Exchange Online cmdlets.")
    return []


def _disconnect_exchange(ctx: Context, _: dict[str, Any], __: list[Any]) -> list[Any]:
    ctx.runspace.exo_tenant = None
    ctx.runspace.exo_commands = None
    return []


def _get_accepted_domain(ctx: Context, p: dict[str, Any], _: list[Any]) -> list[Any]:
    domains = ctx.tenant.accepted_domains
    wanted = p.get("Identity")
    out = []
    for index, domain in enumerate(domains):
        if wanted and wanted.lower() != domain:
            continue
        out.append(
            _obj(
                "Microsoft.Exchange.Data.Directory.SystemConfiguration.AcceptedDomain",
                Name=domain,
                DomainName=domain,
                DomainType="Authoritative",
                Default=index == 0,
            )
        )
    return out


def _get_blocked_sender(ctx: Context, p: dict[str, Any], _: list[Any]) -> list[Any]:
    address = p.get("SenderAddress")
    if address:
        found = ctx.tenant.lookup(address)
        return [_sender_obj(found)] if found else []
    senders = ctx.tenant.listed()
    ctx.progress.append(("Get-BlockedSenderAddress", f"Fetched {len(senders)} restricted senders", 100))
    return [_sender_obj(s) for s in senders]


def _remove_blocked_sender(ctx: Context, p: dict[str, Any], _: list[Any]) -> list[Any]:
    address = p["SenderAddress"]
    if ctx.tenant.lookup(address) is None:
        ctx.write_error(records.exo_not_found(address, "Remove-BlockedSenderAddress"))
        return []
    limit = ctx.tenant.config.unblock_limit_per_day
    if ctx.tenant.unblocks_today(address, ctx.now) >= limit:
        ctx.write_error(records.exo_unblock_limit(address, limit))
        return []
    ctx.tenant.unblock(address, ctx.now)
    return []


def _mailbox_user(ctx: Context, identity: str, cmdlet: str) -> User | None:
    user = ctx.tenant.find_user(identity)
    if user is None or not user.has_mailbox:
        ctx.write_error(records.exo_not_found(identity, cmdlet))
        return None
    return user


def _get_mailbox(ctx: Context, p: dict[str, Any], _: list[Any]) -> list[Any]:
    identity = p.get("Identity")
    if identity is None:
        return [_mailbox_obj(u) for u in ctx.tenant.users.values() if u.has_mailbox]
    user = _mailbox_user(ctx, identity, "Get-Mailbox")
    return [_mailbox_obj(user)] if user else []


def _set_mailbox(ctx: Context, p: dict[str, Any], _: list[Any]) -> list[Any]:
    user = _mailbox_user(ctx, p["Identity"], "Set-Mailbox")
    if user is None:
        return []
    with ctx.tenant.lock:
        if "ForwardingSmtpAddress" in p:
            value = p["ForwardingSmtpAddress"]
            user.forwarding_smtp_address = (
                (value if str(value).lower().startswith("smtp:") else f"smtp:{value}") if value else None
            )
        if "ForwardingAddress" in p:
            user.forwarding_address = p["ForwardingAddress"] or None
        if "DeliverToMailboxAndForward" in p:
            user.deliver_to_mailbox_and_forward = bool(p["DeliverToMailboxAndForward"])
    return []


def _get_inbox_rule(ctx: Context, p: dict[str, Any], _: list[Any]) -> list[Any]:
    """Without -IncludeHidden, the rules Outlook shows; with it, the hidden ones as well (nothing marks them)."""
    user = _mailbox_user(ctx, p.get("Mailbox") or "", "Get-InboxRule")
    if user is None:
        return []
    everything = bool(p.get("IncludeHidden"))
    return [
        _rule_obj(ctx.tenant, user, rule, priority)
        for priority, rule in enumerate(user.inbox_rules, start=1)
        if everything or not rule.hidden
    ]


def _get_mailbox_permission(ctx: Context, p: dict[str, Any], _: list[Any]) -> list[Any]:
    user = _mailbox_user(ctx, p["Identity"], "Get-MailboxPermission")
    return [_mailbox_permission_obj(user, x) for x in user.mailbox_permissions] if user else []


def _get_recipient_permission(ctx: Context, p: dict[str, Any], _: list[Any]) -> list[Any]:
    identity = p.get("Identity")
    if identity is None:
        raise CmdletError(
            records.not_emulated("Get-RecipientPermission", "only -Identity is emulated"), terminating=True
        )
    user = _mailbox_user(ctx, identity, "Get-RecipientPermission")
    return [_send_as_obj(user, x) for x in user.send_as] if user else []


_CLIENT_RULES_WARNING = (
    "Using Outlook Web App or Windows PowerShell to modify your rules will delete any rules that were previously "
    'created using Outlook. If you want to preserve the rules you created using Outlook, select the "Cancel" button.'
)


def _disable_inbox_rule(ctx: Context, p: dict[str, Any], _: list[Any]) -> list[Any]:
    """Microsoft's reference: a built-in pause skipped with -Confirm:$false, and a prompt about the
    mailbox's Outlook client-side rules (which a change removes) skipped with -Force. A remote
    session has no host to answer either, so without them the command fails as PowerShell fails it."""
    cmdlet = "Disable-InboxRule"
    target = "Disable-InboxRule"
    if p.get("Confirm") is not False:
        prompt = f'Are you sure you want to perform this action?\nDisabling Inbox rule "{p["Identity"]}".'
        raise CmdletError(records.prompt_not_supported(cmdlet, target, prompt), terminating=True)
    user = _mailbox_user(ctx, p.get("Mailbox") or "", cmdlet)
    if user is None:
        return []
    if user.client_side_rules and not p.get("Force"):
        raise CmdletError(records.prompt_not_supported(cmdlet, target, _CLIENT_RULES_WARNING), terminating=True)
    identity = p["Identity"]
    wanted = identity.rsplit("\\", 1)[-1]
    for rule in user.inbox_rules:
        if wanted in (rule.rule_id, rule.name):
            if user.client_side_rules and not p.get("AlwaysDeleteOutlookRulesBlob"):
                ctx.warnings.append(_CLIENT_RULES_WARNING)
            with ctx.tenant.lock:
                rule.enabled = False
                user.client_side_rules = False  # the change removed them
            return []
    ctx.write_error(records.exo_not_found(identity, cmdlet))
    return []


# --- Microsoft Graph -------------------------------------------------------------------------------


def _connect_graph(ctx: Context, p: dict[str, Any], _: list[Any]) -> list[Any]:
    app_only = p.get("ClientId") and (p.get("CertificateThumbprint") or p.get("Certificate"))
    if (p.get("Scopes") or not app_only) and not p.get("Identity"):
        raise CmdletError(
            records.graph_connect_refused(
                "Delegated sign-in needs a browser and is not possible in a remote session. "
                "Use -ClientId, -TenantId and -CertificateThumbprint."
            ),
            terminating=True,
        )
    thumbprint = p.get("CertificateThumbprint")
    if thumbprint is not None and len(str(thumbprint)) != 40:
        raise CmdletError(records.graph_connect_thumbprint_length(str(thumbprint)), terminating=True)
    # Without -TenantId (a managed identity) the sign-in is to the runspace's tenant.
    tenant = ctx.tenants.by_graph_tenant(str(p["TenantId"])) if p.get("TenantId") else ctx.tenant
    if tenant is None:
        raise CmdletError(records.graph_connect_refused(f"Tenant '{p['TenantId']}' not found."), terminating=True)
    ctx.runspace.graph_tenant = ctx.runspace.tenant = tenant
    ctx.runspace.graph_client_id = str(p.get("ClientId") or "")
    ctx.runspace.expired = False
    if not p.get("NoWelcome"):
        ctx.information.append("Welcome to Microsoft Graph!")
    return []


def _get_mg_context(ctx: Context, _: dict[str, Any], __: list[Any]) -> list[Any]:
    """The signed-in context; for app-only sign-in, Scopes lists the application permissions granted."""
    if not ctx.runspace.graph_connected:
        return []
    return [
        _obj(
            "Microsoft.Graph.PowerShell.Authentication.AuthContext",
            ClientId=ctx.runspace.graph_client_id,
            TenantId=ctx.tenant.tenant_id,
            AuthType="AppOnly",
            TokenCredentialType="ClientCertificate",
            Scopes=list(ctx.tenant.config.graph_permissions),
            ContextScope="Process",
        )
    ]


def _disconnect_graph(ctx: Context, _: dict[str, Any], __: list[Any]) -> list[Any]:
    ctx.runspace.graph_tenant = None
    return []


def _graph_user(ctx: Context, user_id: str, graph_set: str) -> User | None:
    user = ctx.tenant.find_user(user_id)
    if user is None:
        ctx.write_error(records.graph_user_not_found(user_id, graph_set))
    return user


def _get_mg_user(ctx: Context, p: dict[str, Any], _: list[Any]) -> list[Any]:
    user = _graph_user(ctx, p["UserId"], "GetMgUser_Get")
    return [_graph_user_obj(user)] if user else []


def _get_auth_methods(ctx: Context, p: dict[str, Any], _: list[Any]) -> list[Any]:
    """GET /users/{id}/authentication/methods: the password too, then every method registered."""
    user = _graph_user(ctx, p["UserId"], "GetMgUserAuthenticationMethod_List")
    if user is None:
        return []
    password = AuthMethod(
        "28c10230-6103-485e-b985-444c60001490",  # Graph's fixed id of the password method
        "#microsoft.graph.passwordAuthenticationMethod",
        created=user.password_changed_at,
    )
    return [_auth_method_obj(m) for m in (password, *user.auth_methods)]


#: The $filter clauses the sandbox understands: eq on the properties Graph documents as filterable.
_GRANT_FILTER = re.compile(r"^\s*(clientId|principalId|consentType|resourceId)\s+eq\s+'([^']*)'\s*$", re.IGNORECASE)
_GRANT_FIELDS = {
    "clientid": "client_id",
    "principalid": "principal_id",
    "consenttype": "consent_type",
    "resourceid": "resource_id",
}


def _get_oauth_grants(ctx: Context, p: dict[str, Any], _: list[Any]) -> list[Any]:
    """GET /oauth2PermissionGrants, tenant-wide, narrowed by -Filter (one eq clause) when given."""
    grants = list(ctx.tenant.oauth_grants)
    wanted = p.get("Filter")
    if wanted:
        match = _GRANT_FILTER.match(str(wanted))
        if match is None:
            raise CmdletError(
                records.not_emulated(
                    "Get-MgOauth2PermissionGrant",
                    "only one \"<clientId|principalId|consentType|resourceId> eq '<value>'\" filter",
                ),
                terminating=True,
            )
        attribute, value = _GRANT_FIELDS[match.group(1).lower()], match.group(2).lower()
        grants = [g for g in grants if str(getattr(g, attribute) or "").lower() == value]
    top = p.get("Top")
    if top and not p.get("All"):
        grants = grants[: int(top)]
    return [_grant_obj(g) for g in grants]


def _get_service_principal(ctx: Context, p: dict[str, Any], _: list[Any]) -> list[Any]:
    object_id = p.get("ServicePrincipalId")
    if object_id is None:
        raise CmdletError(
            records.not_emulated("Get-MgServicePrincipal", "only -ServicePrincipalId is emulated"), terminating=True
        )
    app = ctx.tenant.service_principals.get(str(object_id).lower())
    if app is None:
        ctx.write_error(records.graph_user_not_found(str(object_id), "GetMgServicePrincipal_Get"))
        return []
    return [_service_principal_obj(app, p.get("Property"))]


def entra_complexity_ok(password: str) -> bool:
    """Entra ID: 8-256 characters, three of: lower, upper, digit, symbol."""
    if not 8 <= len(password) <= 256:
        return False
    classes = (
        any(c in string.ascii_lowercase for c in password),
        any(c in string.ascii_uppercase for c in password),
        any(c in string.digits for c in password),
        any(not c.isalnum() for c in password),
    )
    return sum(classes) >= 3


def _set_password(user: User, password: str, *, force_change: bool, now: datetime) -> None:
    user.password_sha256 = sha256(password)
    user.password_changed_at = now
    user.force_change_password = force_change


def _update_mg_user(ctx: Context, p: dict[str, Any], _: list[Any]) -> list[Any]:
    graph_set = "UpdateMgUser_UpdateExpanded"
    user = _graph_user(ctx, p["UserId"], graph_set)
    if user is None:
        return []
    profile = p.get("PasswordProfile")
    if profile is not None:
        password = next((v for k, v in profile.items() if k.lower() == "password"), None)
        force = next((v for k, v in profile.items() if k.lower() == "forcechangepasswordnextsignin"), False)
        if user.on_premises_sync:
            ctx.write_error(records.graph_synced_user(graph_set))
            return []
        if not isinstance(password, str) or not entra_complexity_ok(password):
            ctx.write_error(records.graph_password_complexity(graph_set))
            return []
        with ctx.tenant.lock:
            _set_password(user, password, force_change=bool(force), now=ctx.now)
    if "AccountEnabled" in p and p["AccountEnabled"] is not None:
        with ctx.tenant.lock:
            user.account_enabled = bool(p["AccountEnabled"])
    return []


def _runner_password(ctx: Context, p: dict[str, Any], _: list[Any]) -> list[Any]:
    """The UnblockRunner module's Set-UnblockUserPassword: Update-MgUser with a SecureString in front."""
    profile = {
        "Password": p["NewPassword"],
        "ForceChangePasswordNextSignIn": bool(p.get("ForceChangePasswordNextSignIn")),
    }
    return _update_mg_user(ctx, {"UserId": p["UserId"], "PasswordProfile": profile}, [])


def _runner_forwarding(ctx: Context, p: dict[str, Any], _: list[Any]) -> list[Any]:
    """The UnblockRunner module's Clear-UnblockForwarding: Set-Mailbox with $null forwarding."""
    values = {
        "Identity": p["Identity"],
        "ForwardingSmtpAddress": None,
        "ForwardingAddress": None,
        "DeliverToMailboxAndForward": False,
    }
    return _set_mailbox(ctx, values, [])


def _revoke_sessions(ctx: Context, p: dict[str, Any], _: list[Any]) -> list[Any]:
    user = _graph_user(ctx, p["UserId"], "RevokeMgUserSignInSession_Revoke")
    if user is None:
        return []
    with ctx.tenant.lock:
        user.sessions_revoked_at = ctx.now
    return [True]


# --- Active Directory ------------------------------------------------------------------------------

AD = "Microsoft.ActiveDirectory.Management.Commands"
_UPN_FILTER = re.compile(r"^\(userPrincipalName=((?:[^()*\\\x00]|\\[0-9a-fA-F]{2})+)\)$", re.IGNORECASE)


def _ldap_unescape(value: str) -> str:
    return re.sub(r"\\([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), value)


def _ad_users(ctx: Context) -> list[User]:
    return [u for u in ctx.tenant.users.values() if u.on_premises_sync]


def _get_ad_user(ctx: Context, p: dict[str, Any], _: list[Any]) -> list[Any]:
    cmdlet, class_name = "Get-ADUser", "GetADUser"
    if p.get("LDAPFilter"):
        match = _UPN_FILTER.match(p["LDAPFilter"])
        if not match:
            raise CmdletError(
                records.not_emulated(cmdlet, "only (userPrincipalName=...) LDAP filters are understood"),
                terminating=True,
            )
        upn = _ldap_unescape(match.group(1)).lower()
        return [_ad_user_obj(u) for u in _ad_users(ctx) if u.upn == upn]
    identity = p.get("Identity")
    if identity is None:
        raise CmdletError(
            records.not_emulated(cmdlet, "-Filter is not emulated; use -Identity or -LDAPFilter"), terminating=True
        )
    user = ctx.tenant.find_user(identity)
    # AD's -Identity takes a DN, GUID, SID or sAMAccountName, not a UPN; cloud-only users are not in AD.
    if user is None or not user.on_premises_sync or identity.lower() == user.upn:
        raise CmdletError(records.ad_not_found(identity, cmdlet, class_name), terminating=True)
    return [_ad_user_obj(user)]


def _set_ad_user(ctx: Context, p: dict[str, Any], inputs: list[Any]) -> list[Any]:
    cmdlet, class_name = "Set-ADUser", "SetADUser"
    out: list[Any] = []
    identities = [p["Identity"]] if p.get("Identity") is not None else inputs
    for identity in identities:
        key = identity if isinstance(identity, str) else getattr(identity, "DistinguishedName", "")
        user = ctx.tenant.find_user(str(key))
        if user is None or not user.on_premises_sync:
            raise CmdletError(records.ad_not_found(str(key), cmdlet, class_name), terminating=True)
        if p.get("ChangePasswordAtLogon") is not None:
            with ctx.tenant.lock:
                user.force_change_password = bool(p["ChangePasswordAtLogon"])
        if p.get("PassThru"):
            out.append(_ad_user_obj(user))
    return out


def _set_ad_password(ctx: Context, p: dict[str, Any], inputs: list[Any]) -> list[Any]:
    cmdlet, class_name = "Set-ADAccountPassword", "SetADAccountPassword"
    identities = [p["Identity"]] if p.get("Identity") is not None else inputs
    new_password = p.get("NewPassword")
    if new_password is None or (not p.get("Reset") and p.get("OldPassword") is None):
        # the cmdlet asks for the missing password(s), which a host-less remote session cannot answer
        raise CmdletError(records.prompt_not_supported(cmdlet, f"{AD}.{class_name}", "Password:"), terminating=True)
    if not p.get("Reset"):
        raise CmdletError(records.not_emulated(cmdlet, "only -Reset is emulated"), terminating=True)
    for identity in identities:
        key = identity if isinstance(identity, str) else getattr(identity, "DistinguishedName", "")
        user = ctx.tenant.find_user(str(key))
        if user is None or not user.on_premises_sync:
            raise CmdletError(records.ad_not_found(str(key), cmdlet, class_name), terminating=True)
        if not entra_complexity_ok(new_password):
            raise CmdletError(records.ad_password_policy(), terminating=True)
        with ctx.tenant.lock:
            _set_password(user, new_password, force_change=False, now=ctx.now)
    if p.get("PassThru"):
        return [
            _ad_user_obj(u)
            for u in (ctx.tenant.find_user(str(getattr(i, "DistinguishedName", i))) for i in identities)
            if u
        ]
    return []


# --- PowerShell ---------------------------------------------------------------------------------------


def _get_command(ctx: Context, p: dict[str, Any], _: list[Any]) -> list[Any]:
    """Get-Command [-Name <String[]>]: the commands this runspace can run now, as Get-Command lists them."""
    from service.sandbox import metadata  # the formatter builds on this module's table

    here = metadata.available(ctx.runspace, jea=ctx.jea, hidden=hidden_in(ctx.runspace, jea=ctx.jea))
    names = p.get("Name")
    found = metadata.matching(here, names)
    for name in names or []:
        if not any(ch in name for ch in "*?[") and not any(c.name.lower() == name.lower() for c in found):
            ctx.write_error(records.command_not_found(name))
    return [metadata.command_info(c) for c in found]


# --- the table -----------------------------------------------------------------------------------

#: The runner's ValidatePattern for addresses (ps_scripts/UnblockRunner.psrc): through the JEA endpoint
#: the SenderAddress of the restricted-list commands must match it (JEA wraps it as ^(...)$).
ADDRESS_PATTERN = r"[A-Za-z0-9._+'-]{1,64}@(?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,63}"
GUID_PATTERN = r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
JEA_PATTERNS: dict[tuple[str, str], str] = {
    ("get-blockedsenderaddress", "senderaddress"): ADDRESS_PATTERN,
    ("remove-blockedsenderaddress", "senderaddress"): ADDRESS_PATTERN,
    ("get-inboxrule", "mailbox"): ADDRESS_PATTERN,
    ("get-mailbox", "identity"): ADDRESS_PATTERN,
    ("get-mailboxpermission", "identity"): ADDRESS_PATTERN,
    ("get-recipientpermission", "identity"): ADDRESS_PATTERN,
    ("get-mguserauthenticationmethod", "userid"): ADDRESS_PATTERN,
    ("get-mgoauth2permissiongrant", "filter"): f"principalId eq '{GUID_PATTERN}'",
    ("get-mgserviceprincipal", "serviceprincipalid"): GUID_PATTERN,
}

_EXO_CONNECT = "Microsoft.Exchange.Management.ExoPowershellSnapin"
_GRAPH_AUTH = "Microsoft.Graph.PowerShell.Authentication.Cmdlets"
_GRAPH = "Microsoft.Graph.PowerShell.Cmdlets"

CMDLETS: dict[str, Cmdlet] = {
    c.name.lower(): c
    for c in (
        Cmdlet("Connect-ExchangeOnline", "exo-connect", _connect_exchange, f"{_EXO_CONNECT}.ConnectExchangeOnline"),
        Cmdlet(
            "Disconnect-ExchangeOnline", "exo-connect", _disconnect_exchange, f"{_EXO_CONNECT}.DisconnectExchangeOnline"
        ),
        Cmdlet("Get-AcceptedDomain", "exo", _get_accepted_domain, f"{EXO}.SystemConfigurationTasks.GetAcceptedDomain"),
        Cmdlet("Get-BlockedSenderAddress", "exo", _get_blocked_sender, f"{EXO}.Hygiene.GetBlockedSenderAddress"),
        Cmdlet(
            "Remove-BlockedSenderAddress", "exo", _remove_blocked_sender, f"{EXO}.Hygiene.RemoveBlockedSenderAddress"
        ),
        Cmdlet("Get-Mailbox", "exo", _get_mailbox, f"{EXO}.RecipientTasks.GetMailbox"),
        Cmdlet("Set-Mailbox", "exo", _set_mailbox, f"{EXO}.RecipientTasks.SetMailbox"),
        Cmdlet("Get-InboxRule", "exo", _get_inbox_rule, f"{EXO}.InboxRule.GetInboxRule"),
        Cmdlet("Disable-InboxRule", "exo", _disable_inbox_rule, f"{EXO}.InboxRule.DisableInboxRule"),
        Cmdlet("Get-MailboxPermission", "exo", _get_mailbox_permission, f"{EXO}.RecipientTasks.GetMailboxPermission"),
        Cmdlet(
            "Get-RecipientPermission",
            "exo",
            _get_recipient_permission,
            f"{EXO}.RecipientTasks.GetRecipientPermission",
        ),
        Cmdlet("Connect-MgGraph", "graph-connect", _connect_graph, f"{_GRAPH_AUTH}.ConnectMgGraph"),
        Cmdlet("Disconnect-MgGraph", "graph-connect", _disconnect_graph, f"{_GRAPH_AUTH}.DisconnectMgGraph"),
        Cmdlet("Get-MgContext", "graph-connect", _get_mg_context, f"{_GRAPH_AUTH}.GetMgContext"),
        Cmdlet("Get-MgUser", "graph", _get_mg_user, f"{_GRAPH}.GetMgUser_Get", graph_set="GetMgUser_Get"),
        Cmdlet(
            "Update-MgUser",
            "graph",
            _update_mg_user,
            f"{_GRAPH}.UpdateMgUser_UpdateExpanded",
            graph_set="UpdateMgUser_UpdateExpanded",
        ),
        Cmdlet(
            "Get-MgUserAuthenticationMethod",
            "graph",
            _get_auth_methods,
            f"{_GRAPH}.GetMgUserAuthenticationMethod_List",
            graph_set="GetMgUserAuthenticationMethod_List",
        ),
        Cmdlet(
            "Get-MgOauth2PermissionGrant",
            "graph",
            _get_oauth_grants,
            f"{_GRAPH}.GetMgOauth2PermissionGrant_List",
            graph_set="GetMgOauth2PermissionGrant_List",
        ),
        Cmdlet(
            "Get-MgServicePrincipal",
            "graph",
            _get_service_principal,
            f"{_GRAPH}.GetMgServicePrincipal_Get",
            graph_set="GetMgServicePrincipal_Get",
        ),
        Cmdlet(
            "Revoke-MgUserSignInSession",
            "graph",
            _revoke_sessions,
            f"{_GRAPH}.RevokeMgUserSignInSession_Revoke",
            graph_set="RevokeMgUserSignInSession_Revoke",
        ),
        Cmdlet(
            "Set-UnblockUserPassword",
            "runner",
            _runner_password,
            "UnblockRunner\\Set-UnblockUserPassword",
            graph_set="UpdateMgUser_UpdateExpanded",
        ),
        Cmdlet("Clear-UnblockForwarding", "runner", _runner_forwarding, "UnblockRunner\\Clear-UnblockForwarding"),
        Cmdlet("Get-ADUser", "ad", _get_ad_user, f"{AD}.GetADUser"),
        Cmdlet("Set-ADAccountPassword", "ad", _set_ad_password, f"{AD}.SetADAccountPassword"),
        Cmdlet("Set-ADUser", "ad", _set_ad_user, f"{AD}.SetADUser"),
        Cmdlet("Get-Command", "core", _get_command, "Microsoft.PowerShell.Commands.GetCommandCommand"),
    )
}


def pattern_for(cmdlet: Cmdlet, *, jea: bool) -> Callable[[ParameterSyntax], str | None]:
    """The ValidatePattern a parameter has here: the command's own, or the JEA role capability's."""

    def pattern(parameter: ParameterSyntax) -> str | None:
        if jea and (found := JEA_PATTERNS.get((cmdlet.name.lower(), parameter.name.lower()))):
            return found
        return parameter.pattern

    return pattern


#: What the JEA endpoint ``UnblockRunner`` makes visible (ps_scripts/UnblockRunner.psrc).
JEA_VISIBLE: frozenset[str] = frozenset(
    name.lower()
    for name in (
        "Get-AcceptedDomain",
        "Get-BlockedSenderAddress",
        "Remove-BlockedSenderAddress",
        "Get-InboxRule",
        "Disable-InboxRule",
        "Get-Mailbox",
        "Get-MailboxPermission",
        "Get-RecipientPermission",
        "Get-MgUser",
        "Get-MgUserAuthenticationMethod",
        "Get-MgOauth2PermissionGrant",
        "Get-MgServicePrincipal",
        "Revoke-MgUserSignInSession",
        "Set-UnblockUserPassword",
        "Clear-UnblockForwarding",
        "Get-ADUser",
        "Set-ADAccountPassword",
        "Set-ADUser",
    )
)


def is_connect(name: str) -> bool:
    """Connect-*/Disconnect-* make or end a session; session faults never strike them."""
    cmdlet = CMDLETS.get(name.lower())
    return cmdlet is not None and cmdlet.module.endswith("-connect")


def visible(name: str, *, jea: bool, hidden: Callable[[str], bool]) -> Cmdlet | None:
    """The command this endpoint offers under ``name`` (before any sign-in), or None."""
    cmdlet = CMDLETS.get(name.lower())
    if cmdlet is None or hidden(cmdlet.name):
        return None
    if cmdlet.module == "core":
        return cmdlet  # a JEA session configuration makes these visible by default
    if (jea and cmdlet.name.lower() not in JEA_VISIBLE) or (cmdlet.module == "runner" and not jea):
        return None
    return cmdlet


def lookup(
    name: str, runspace: Runspace, *, jea: bool, hidden: Callable[[str], bool] = lambda _: False
) -> Cmdlet | records.ErrorSpec:
    """The command a name refers to in this runspace, or the error PowerShell would give."""
    cmdlet = visible(name, jea=jea, hidden=hidden)
    if cmdlet is None:
        return records.command_not_found(name)
    if jea:
        # The endpoint's startup script connected both modules. A lapsed sign-in takes the Exchange
        # commands (functions of the module Connect-ExchangeOnline generated) with it; Graph's stay and
        # ask for a connect, and so does the wrapper that calls Update-MgUser.
        if runspace.expired and cmdlet.module == "exo":
            return records.command_not_found(cmdlet.name)
        if runspace.expired and cmdlet.graph_set:
            return records.graph_not_connected(cmdlet.graph_set)
        return cmdlet
    if cmdlet.module == "exo":
        if not runspace.exo_connected:
            return records.command_not_found(cmdlet.name)  # no Connect-ExchangeOnline: the commands do not exist
        if runspace.exo_commands is not None and cmdlet.name.lower() not in runspace.exo_commands:
            return records.command_not_found(cmdlet.name)
    if cmdlet.module == "graph" and not runspace.graph_connected:
        return records.graph_not_connected(cmdlet.graph_set)
    return cmdlet
