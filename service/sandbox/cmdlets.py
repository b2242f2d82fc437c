"""The commands the sandbox emulates, with parameter binding that behaves like PowerShell's.

Binding follows the rules a client can observe: names are case-insensitive and may be
abbreviated to an unambiguous prefix or given by alias; positional arguments fill positional
parameters in order; mandatory parameters must be bound (a remote session cannot prompt);
values are converted to the parameter's type or refused with PowerShell's error ids
(``NamedParameterNotFound``, ``MissingMandatoryParameter``, ``CannotConvertArgumentNoMessage``).
A SecureString parameter accepts only a SecureString: a plain string is refused, as in
PowerShell.

Each command reads and writes the :class:`~service.sandbox.tenant.Tenant` and returns output
objects carrying the real type names and properties.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psrpcore.types import PSCustomObject, PSDateTime, PSSecureString

from service.sandbox import records
from service.sandbox.records import CmdletError
from service.sandbox.tenant import BlockedSender, InboxRule, Tenant, User, now_utc, sha256

Kind = str  # "string" | "strings" | "switch" | "bool" | "int" | "securestring" | "hashtable" | "object"


@dataclass(frozen=True)
class Param:
    name: str
    kind: Kind = "string"
    mandatory: bool = False
    position: int | None = None
    pipeline: bool = False
    aliases: tuple[str, ...] = ()
    pattern: str | None = None
    nullable: bool = False


@dataclass
class Runspace:
    """Per-runspace module state: what Connect-ExchangeOnline / Connect-MgGraph left behind."""

    shell_id: str
    index: int
    exo_connected: bool = False
    exo_commands: frozenset[str] | None = None  # Connect-ExchangeOnline -CommandName
    graph_connected: bool = False
    calls: int = 0

    @property
    def name(self) -> str:
        return f"{self.shell_id}/{self.index}"


@dataclass
class Context:
    tenant: Tenant
    runspace: Runspace
    jea: bool
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
    module: str  # "exo" | "exo-connect" | "graph" | "graph-connect" | "ad"
    params: tuple[Param, ...]
    run: Run
    class_name: str
    graph_set: str = ""

    @property
    def error_target(self) -> str:
        return (self.graph_set and f"Microsoft.Graph.PowerShell.Cmdlets.{self.graph_set}") or self.class_name


# --- binding ------------------------------------------------------------------------------------


def _resolve(cmdlet: Cmdlet, name: str) -> Param:
    wanted = name.lower().lstrip("-")
    for param in cmdlet.params:
        if wanted == param.name.lower() or wanted in (a.lower() for a in param.aliases):
            return param
    matches = [p for p in cmdlet.params if p.name.lower().startswith(wanted)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise CmdletError(
            records.ambiguous_parameter(name, [m.name for m in matches], cmdlet.class_name), terminating=True
        )
    raise CmdletError(records.parameter_not_found(name, cmdlet.class_name), terminating=True)


def _convert(cmdlet: Cmdlet, param: Param, value: Any) -> Any:
    def refuse(type_name: str) -> CmdletError:
        return CmdletError(records.cannot_convert(param.name, value, type_name, cmdlet.class_name), terminating=True)

    if value is None:
        if param.kind in ("switch",):
            return True
        if param.nullable or not param.mandatory:
            return None
        raise refuse("System.String")
    kind = param.kind
    if kind == "switch" or kind == "bool":
        if isinstance(value, bool):
            return bool(value)
        if isinstance(value, int):
            return value != 0
        raise refuse("System.Management.Automation.SwitchParameter" if kind == "switch" else "System.Boolean")
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise refuse("System.Int32")
        try:
            return int(value)
        except ValueError:
            raise refuse("System.Int32") from None
    if kind == "securestring":
        if isinstance(value, PSSecureString):
            return str(value.decrypt())
        raise refuse("System.Security.SecureString")
    if kind == "hashtable":
        if isinstance(value, dict):
            return {str(k): v for k, v in value.items()}
        raise refuse("System.Collections.Hashtable")
    if kind == "strings":
        items = list(value) if isinstance(value, list | tuple) else [value]
        if not all(isinstance(v, str | int) for v in items):
            raise refuse("System.String[]")
        return [str(v) for v in items]
    if kind == "string":
        if (isinstance(value, str | int | float) and not isinstance(value, bool)) or isinstance(value, bool):
            text = str(value)
        else:
            raise refuse("System.String")
        if param.pattern and not re.fullmatch(param.pattern, text):
            raise CmdletError(
                records.validation_failed(param.name, text, param.pattern, cmdlet.class_name),
                terminating=True,
            )
        return text
    return value


def bind(cmdlet: Cmdlet, raw: list[tuple[str | None, Any]]) -> dict[str, Any]:
    bound: dict[str, Any] = {}
    positional: list[Any] = []
    for name, value in raw:
        if name is None:
            positional.append(value)
            continue
        param = _resolve(cmdlet, name)
        bound[param.name] = _convert(cmdlet, param, value)
    slots = sorted((p for p in cmdlet.params if p.position is not None), key=lambda p: p.position or 0)
    for value in positional:
        free = next((p for p in slots if p.name not in bound), None)
        if free is None:
            raise CmdletError(records.positional_not_found(value, cmdlet.class_name), terminating=True)
        bound[free.name] = _convert(cmdlet, free, value)
    return bound


def check_mandatory(cmdlet: Cmdlet, bound: dict[str, Any], has_input: bool) -> None:
    missing = [p.name for p in cmdlet.params if p.mandatory and p.name not in bound and not (p.pipeline and has_input)]
    if missing:
        raise CmdletError(records.missing_mandatory(missing, cmdlet.class_name), terminating=True)


def loggable(cmdlet: Cmdlet, bound: dict[str, Any]) -> dict[str, Any]:
    """Bound parameters as JSON, with every secret replaced by its SHA-256."""
    out: dict[str, Any] = {}
    for param in cmdlet.params:
        if param.name not in bound:
            continue
        value = bound[param.name]
        if param.kind == "securestring" and value is not None:
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
        ForwardingAddress=None,
        DeliverToMailboxAndForward=user.deliver_to_mailbox_and_forward,
        ExternalDirectoryObjectId=user.object_id,
    )


def _rule_obj(user: User, rule: InboxRule) -> PSCustomObject:
    return _obj(
        "Microsoft.Exchange.Management.Common.InboxRule",
        Identity=f"{user.upn}\\{rule.rule_id}",
        RuleIdentity=rule.rule_id,
        Name=rule.name,
        Enabled=rule.enabled,
        ForwardTo=list(rule.forward_to) or None,
        RedirectTo=list(rule.redirect_to) or None,
        DeleteMessage=rule.delete_message,
        MoveToFolder=rule.move_to_folder,
        MailboxOwnerId=user.display_name,
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
    has_cert = any(p.get(k) for k in ("CertificateThumbprint", "Certificate", "CertificateFilePath"))
    app_only = p.get("AppId") and has_cert and p.get("Organization")
    if not (app_only or (p.get("ManagedIdentity") and p.get("Organization"))):
        raise CmdletError(
            records.exo_connect_invalid(
                "Interactive sign-in is not possible in a remote session. Use app-only authentication: "
                "-AppId, -Organization and one of -CertificateThumbprint, -Certificate or -CertificateFilePath."
            ),
            terminating=True,
        )
    organization = str(p["Organization"]).lower()
    if organization not in ctx.tenant.accepted_domains:
        raise CmdletError(
            records.exo_connect_invalid(f"The organization '{p['Organization']}' was not found."),
            terminating=True,
        )
    ctx.runspace.exo_connected = True
    names = p.get("CommandName")
    ctx.runspace.exo_commands = frozenset(n.lower() for n in names) if names else None
    if p.get("ShowBanner", True):
        ctx.information.append("This V3 EXO PowerShell module contains new REST API backed Exchange Online cmdlets.")
    return []


def _disconnect_exchange(ctx: Context, _: dict[str, Any], __: list[Any]) -> list[Any]:
    ctx.runspace.exo_connected = False
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
    class_name = f"{EXO}.Hygiene.RemoveBlockedSenderAddress"
    if ctx.tenant.lookup(address) is None:
        ctx.write_error(records.exo_not_found(address, class_name))
        return []
    limit = ctx.tenant.config.unblock_limit_per_day
    if ctx.tenant.unblocks_today(address, ctx.now) >= limit:
        ctx.write_error(records.exo_unblock_limit(address, limit))
        return []
    ctx.tenant.unblock(address, ctx.now)
    return []


def _mailbox_user(ctx: Context, identity: str, class_name: str) -> User | None:
    user = ctx.tenant.find_user(identity)
    if user is None or not user.has_mailbox:
        ctx.write_error(records.exo_not_found(identity, class_name))
        return None
    return user


def _get_mailbox(ctx: Context, p: dict[str, Any], _: list[Any]) -> list[Any]:
    identity = p.get("Identity")
    if identity is None:
        return [_mailbox_obj(u) for u in ctx.tenant.users.values() if u.has_mailbox]
    user = _mailbox_user(ctx, identity, f"{EXO}.RecipientTasks.GetMailbox")
    return [_mailbox_obj(user)] if user else []


def _set_mailbox(ctx: Context, p: dict[str, Any], _: list[Any]) -> list[Any]:
    user = _mailbox_user(ctx, p["Identity"], f"{EXO}.RecipientTasks.SetMailbox")
    if user is None:
        return []
    with ctx.tenant.lock:
        if "ForwardingSmtpAddress" in p:
            user.forwarding_smtp_address = p["ForwardingSmtpAddress"] or None
        if "DeliverToMailboxAndForward" in p:
            user.deliver_to_mailbox_and_forward = bool(p["DeliverToMailboxAndForward"])
    return []


def _get_inbox_rule(ctx: Context, p: dict[str, Any], _: list[Any]) -> list[Any]:
    user = _mailbox_user(ctx, p.get("Mailbox") or "", f"{EXO}.InboxRule.GetInboxRule")
    if user is None:
        return []
    return [_rule_obj(user, rule) for rule in user.inbox_rules]


def _disable_inbox_rule(ctx: Context, p: dict[str, Any], _: list[Any]) -> list[Any]:
    class_name = f"{EXO}.InboxRule.DisableInboxRule"
    user = _mailbox_user(ctx, p.get("Mailbox") or "", class_name)
    if user is None:
        return []
    identity = p["Identity"]
    wanted = identity.rsplit("\\", 1)[-1]
    for rule in user.inbox_rules:
        if wanted in (rule.rule_id, rule.name):
            if not p.get("AlwaysDeleteOutlookRulesBlob"):
                ctx.warnings.append(
                    "Using Outlook Web App or Windows PowerShell to modify your rules will delete any rules that "
                    "were previously created using Outlook. If you want to preserve the rules you created using "
                    'Outlook, select the "Cancel" button.'
                )
            with ctx.tenant.lock:
                rule.enabled = False
            return []
    ctx.write_error(records.exo_not_found(identity, class_name))
    return []


# --- Microsoft Graph -------------------------------------------------------------------------------


def _connect_graph(ctx: Context, p: dict[str, Any], _: list[Any]) -> list[Any]:
    app_only = p.get("ClientId") and (p.get("CertificateThumbprint") or p.get("Certificate"))
    if (p.get("Scopes") or not app_only) and not p.get("Identity"):
        raise CmdletError(
            records.exo_connect_invalid(
                "Delegated sign-in needs a browser and is not possible in a remote session. "
                "Use -ClientId, -TenantId and -CertificateThumbprint."
            ),
            terminating=True,
        )
    ctx.runspace.graph_connected = True
    if not p.get("NoWelcome"):
        ctx.information.append("Welcome to Microsoft Graph!")
    return []


def _disconnect_graph(ctx: Context, _: dict[str, Any], __: list[Any]) -> list[Any]:
    ctx.runspace.graph_connected = False
    return []


def _graph_user(ctx: Context, user_id: str, graph_set: str) -> User | None:
    user = ctx.tenant.find_user(user_id)
    if user is None:
        ctx.write_error(records.graph_user_not_found(user_id, graph_set))
    return user


def _get_mg_user(ctx: Context, p: dict[str, Any], _: list[Any]) -> list[Any]:
    user = _graph_user(ctx, p["UserId"], "GetMgUser_Get")
    return [_graph_user_obj(user)] if user else []


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
    values = {"Identity": p["Identity"], "ForwardingSmtpAddress": None, "DeliverToMailboxAndForward": False}
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
    class_name = f"{AD}.GetADUser"
    if p.get("LDAPFilter"):
        match = _UPN_FILTER.match(p["LDAPFilter"])
        if not match:
            raise CmdletError(
                records.exo_connect_invalid("The sandbox understands only (userPrincipalName=...) LDAP filters."),
                terminating=True,
            )
        upn = _ldap_unescape(match.group(1)).lower()
        return [_ad_user_obj(u) for u in _ad_users(ctx) if u.upn == upn]
    identity = p.get("Identity")
    if identity is None:
        raise CmdletError(records.missing_mandatory(["Identity"], class_name), terminating=True)
    user = ctx.tenant.find_user(identity)
    # AD's -Identity takes a DN, GUID, SID or sAMAccountName, not a UPN; cloud-only users are not in AD.
    if user is None or not user.on_premises_sync or identity.lower() == user.upn:
        raise CmdletError(records.ad_not_found(identity, class_name), terminating=True)
    return [_ad_user_obj(user)]


def _set_ad_user(ctx: Context, p: dict[str, Any], inputs: list[Any]) -> list[Any]:
    class_name = f"{AD}.SetADUser"
    out: list[Any] = []
    identities = [p["Identity"]] if p.get("Identity") is not None else inputs
    if not identities:
        raise CmdletError(records.missing_mandatory(["Identity"], class_name), terminating=True)
    for identity in identities:
        key = identity if isinstance(identity, str) else getattr(identity, "DistinguishedName", "")
        user = ctx.tenant.find_user(str(key))
        if user is None or not user.on_premises_sync:
            raise CmdletError(records.ad_not_found(str(key), class_name), terminating=True)
        if p.get("ChangePasswordAtLogon") is not None:
            with ctx.tenant.lock:
                user.force_change_password = bool(p["ChangePasswordAtLogon"])
        if p.get("PassThru"):
            out.append(_ad_user_obj(user))
    return out


def _set_ad_password(ctx: Context, p: dict[str, Any], inputs: list[Any]) -> list[Any]:
    class_name = f"{AD}.SetADAccountPassword"
    identities = [p["Identity"]] if p.get("Identity") is not None else inputs
    if not identities:
        raise CmdletError(records.missing_mandatory(["Identity"], class_name), terminating=True)
    if not p.get("Reset"):
        raise CmdletError(records.missing_mandatory(["OldPassword"], class_name), terminating=True)
    new_password = p.get("NewPassword")
    if new_password is None:
        raise CmdletError(records.missing_mandatory(["NewPassword"], class_name), terminating=True)
    for identity in identities:
        key = identity if isinstance(identity, str) else getattr(identity, "DistinguishedName", "")
        user = ctx.tenant.find_user(str(key))
        if user is None or not user.on_premises_sync:
            raise CmdletError(records.ad_not_found(str(key), class_name), terminating=True)
        if not entra_complexity_ok(new_password):
            raise CmdletError(records.ad_password_policy(class_name), terminating=True)
        with ctx.tenant.lock:
            _set_password(user, new_password, force_change=False, now=ctx.now)
    if p.get("PassThru"):
        return [
            _ad_user_obj(u)
            for u in (ctx.tenant.find_user(str(getattr(i, "DistinguishedName", i))) for i in identities)
            if u
        ]
    return []


# --- the table -----------------------------------------------------------------------------------

# The runner's ValidatePattern for addresses (ps_scripts/UnblockRunner.psrc).
_ADDRESS = r"[A-Za-z0-9._+'-]{1,64}@(?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,63}"
_CONFIRM = Param("Confirm", "switch")

CMDLETS: dict[str, Cmdlet] = {
    c.name.lower(): c
    for c in (
        Cmdlet(
            "Connect-ExchangeOnline",
            "exo-connect",
            (
                Param("AppId"),
                Param("CertificateThumbprint"),
                Param("Certificate", "object"),
                Param("CertificateFilePath"),
                Param("CertificatePassword", "securestring"),
                Param("Organization"),
                Param("ManagedIdentity", "switch"),
                Param("UserPrincipalName"),
                Param("ShowBanner", "switch"),
                Param("ShowProgress", "bool"),
                Param("CommandName", "strings"),
                Param("SkipLoadingFormatData", "switch"),
                Param("SkipLoadingCmdletHelp", "switch"),
                Param("ConnectionUri"),
                Param("ExchangeEnvironmentName"),
            ),
            _connect_exchange,
            "Microsoft.Exchange.Management.ExoPowershellSnapin.ConnectExchangeOnline",
        ),
        Cmdlet(
            "Disconnect-ExchangeOnline",
            "exo-connect",
            (_CONFIRM,),
            _disconnect_exchange,
            "Microsoft.Exchange.Management.ExoPowershellSnapin.DisconnectExchangeOnline",
        ),
        Cmdlet(
            "Get-AcceptedDomain",
            "exo",
            (Param("Identity", position=0),),
            _get_accepted_domain,
            f"{EXO}.SystemConfigurationTasks.GetAcceptedDomain",
        ),
        Cmdlet(
            "Get-BlockedSenderAddress",
            "exo",
            (Param("SenderAddress", pattern=_ADDRESS), Param("ResultSize")),
            _get_blocked_sender,
            f"{EXO}.Hygiene.GetBlockedSenderAddress",
        ),
        Cmdlet(
            "Remove-BlockedSenderAddress",
            "exo",
            (Param("SenderAddress", mandatory=True, pattern=_ADDRESS), Param("Reason"), _CONFIRM),
            _remove_blocked_sender,
            f"{EXO}.Hygiene.RemoveBlockedSenderAddress",
        ),
        Cmdlet(
            "Get-Mailbox",
            "exo",
            (Param("Identity", position=0), Param("ResultSize")),
            _get_mailbox,
            f"{EXO}.RecipientTasks.GetMailbox",
        ),
        Cmdlet(
            "Set-Mailbox",
            "exo",
            (
                Param("Identity", mandatory=True, position=0),
                Param("ForwardingSmtpAddress", nullable=True),
                Param("ForwardingAddress", nullable=True),
                Param("DeliverToMailboxAndForward", "bool"),
                _CONFIRM,
            ),
            _set_mailbox,
            f"{EXO}.RecipientTasks.SetMailbox",
        ),
        Cmdlet(
            "Get-InboxRule",
            "exo",
            (Param("Mailbox"), Param("Identity", position=0), Param("IncludeHidden", "switch")),
            _get_inbox_rule,
            f"{EXO}.InboxRule.GetInboxRule",
        ),
        Cmdlet(
            "Disable-InboxRule",
            "exo",
            (
                Param("Identity", mandatory=True, position=0),
                Param("Mailbox"),
                _CONFIRM,
                Param("AlwaysDeleteOutlookRulesBlob", "switch"),
            ),
            _disable_inbox_rule,
            f"{EXO}.InboxRule.DisableInboxRule",
        ),
        Cmdlet(
            "Connect-MgGraph",
            "graph-connect",
            (
                Param("ClientId", aliases=("AppId", "ApplicationId")),
                Param("CertificateThumbprint"),
                Param("Certificate", "object"),
                Param("TenantId", aliases=("Audience", "Tenant")),
                Param("Scopes", "strings"),
                Param("Identity", "switch"),
                Param("NoWelcome", "switch"),
                Param("ContextScope"),
            ),
            _connect_graph,
            "Microsoft.Graph.PowerShell.Authentication.Cmdlets.ConnectMgGraph",
        ),
        Cmdlet(
            "Disconnect-MgGraph",
            "graph-connect",
            (),
            _disconnect_graph,
            "Microsoft.Graph.PowerShell.Authentication.Cmdlets.DisconnectMgGraph",
        ),
        Cmdlet(
            "Get-MgUser",
            "graph",
            (Param("UserId", mandatory=True, position=0), Param("Property", "strings")),
            _get_mg_user,
            "Microsoft.Graph.PowerShell.Cmdlets.GetMgUser_Get",
            graph_set="GetMgUser_Get",
        ),
        Cmdlet(
            "Update-MgUser",
            "graph",
            (
                Param("UserId", mandatory=True, position=0),
                Param("PasswordProfile", "hashtable"),
                Param("AccountEnabled", "bool"),
            ),
            _update_mg_user,
            "Microsoft.Graph.PowerShell.Cmdlets.UpdateMgUser_UpdateExpanded",
            graph_set="UpdateMgUser_UpdateExpanded",
        ),
        Cmdlet(
            "Revoke-MgUserSignInSession",
            "graph",
            (Param("UserId", mandatory=True, position=0),),
            _revoke_sessions,
            "Microsoft.Graph.PowerShell.Cmdlets.RevokeMgUserSignInSession_Revoke",
            graph_set="RevokeMgUserSignInSession_Revoke",
        ),
        Cmdlet(
            "Set-UnblockUserPassword",
            "runner",
            (
                Param("UserId", mandatory=True, pattern=_ADDRESS),
                Param("NewPassword", "securestring", mandatory=True),
                Param("ForceChangePasswordNextSignIn", "bool"),
            ),
            _runner_password,
            "UnblockRunner\\Set-UnblockUserPassword",
            graph_set="UpdateMgUser_UpdateExpanded",
        ),
        Cmdlet(
            "Clear-UnblockForwarding",
            "runner",
            (Param("Identity", mandatory=True, pattern=_ADDRESS),),
            _runner_forwarding,
            "UnblockRunner\\Clear-UnblockForwarding",
        ),
        Cmdlet(
            "Get-ADUser",
            "ad",
            (
                Param("Identity", position=0, pipeline=True),
                Param("LDAPFilter"),
                Param("Filter"),
                Param("Properties", "strings"),
                Param("Server"),
            ),
            _get_ad_user,
            f"{AD}.GetADUser",
        ),
        Cmdlet(
            "Set-ADAccountPassword",
            "ad",
            (
                Param("Identity", "object", mandatory=True, position=0, pipeline=True),
                Param("Reset", "switch"),
                Param("NewPassword", "securestring"),
                Param("OldPassword", "securestring"),
                Param("PassThru", "switch"),
                Param("Server"),
                _CONFIRM,
            ),
            _set_ad_password,
            f"{AD}.SetADAccountPassword",
        ),
        Cmdlet(
            "Set-ADUser",
            "ad",
            (
                Param("Identity", "object", mandatory=True, position=0, pipeline=True),
                Param("ChangePasswordAtLogon", "bool"),
                Param("PassThru", "switch"),
                Param("Server"),
                _CONFIRM,
            ),
            _set_ad_user,
            f"{AD}.SetADUser",
        ),
    )
}

#: What the JEA endpoint ``UnblockRunner`` makes visible (ps_scripts/UnblockRunner.psrc).
JEA_VISIBLE: frozenset[str] = frozenset(
    name.lower()
    for name in (
        "Get-AcceptedDomain",
        "Get-BlockedSenderAddress",
        "Remove-BlockedSenderAddress",
        "Get-InboxRule",
        "Disable-InboxRule",
        "Get-MgUser",
        "Revoke-MgUserSignInSession",
        "Set-UnblockUserPassword",
        "Clear-UnblockForwarding",
        "Get-ADUser",
        "Set-ADAccountPassword",
        "Set-ADUser",
    )
)


def lookup(name: str, runspace: Runspace, *, jea: bool) -> Cmdlet | records.ErrorSpec:
    """The command a name refers to in this runspace, or the error PowerShell would give."""
    cmdlet = CMDLETS.get(name.lower())
    if cmdlet is None or (jea and name.lower() not in JEA_VISIBLE) or (cmdlet.module == "runner" and not jea):
        return records.command_not_found(name)
    if jea:
        return cmdlet  # the JEA endpoint's startup script has connected both modules
    if cmdlet.module == "exo":
        if not runspace.exo_connected:
            return records.exo_not_connected(cmdlet.name)
        if runspace.exo_commands is not None and cmdlet.name.lower() not in runspace.exo_commands:
            return records.command_not_found(cmdlet.name)
    if cmdlet.module == "graph" and not runspace.graph_connected:
        return records.graph_not_connected(cmdlet.name)
    return cmdlet
