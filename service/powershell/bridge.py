"""The PowerShell bridge: the tenant operations, each one remote pipeline of named commands.

Every value a user gave (an address, a password, a rule id) reaches PowerShell only as a bound
parameter of a command from :mod:`service.powershell.commands`; nothing here builds script
text. Results come back as the plain values of :mod:`service.domain.tenant`, and failures as
the classified errors of :mod:`service.errors`.
"""

from __future__ import annotations

import re
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from service import metrics
from service.config import Settings, is_guid
from service.domain.tenant import (
    AuthMethod,
    Forwarding,
    InboxRule,
    MailboxPermission,
    OAuthGrant,
    RecipientPermission,
    Restriction,
    ServicePrincipal,
    UserInfo,
)
from service.errors import BridgeError, MailboxNotFound
from service.logging import get_logger, secret_in_flight
from service.powershell import commands as c
from service.powershell.budget import RunspaceBudget
from service.powershell.circuit import CircuitBreaker
from service.powershell.classify import Classified, classify, micro_delay
from service.powershell.pool import PoolStats, WarmPool
from service.powershell.runspace import EndpointOptions, RawResult, Secret, properties

log = get_logger(__name__)

_FRACTION = re.compile(r"(\.\d+)")


def parse_ps_datetime(value: Any) -> datetime | None:
    """DateTime values arrive from pypsrp as text such as ``2026-11-26T16:53:29.2181783+00:00``."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    text = str(value).strip().replace("Z", "+00:00")
    text = _FRACTION.sub(lambda m: m.group(1)[:7], text, count=1)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, list | tuple):
        return tuple(str(v) for v in value if v is not None)
    return (str(value),)


def restriction_from(obj: Any) -> Restriction:
    p = properties(obj)
    return Restriction(
        sender_address=str(p.get("SenderAddress") or p.get("Identity") or "").lower(),
        reason=str(p.get("Reason") or ""),
        blocked_at=parse_ps_datetime(p.get("CreatedDatetime")),
        changed_at=parse_ps_datetime(p.get("ChangedDatetime")),
        temporary_block=bool(p.get("TemporaryBlock")),
    )


_RECIPIENT = re.compile(r'^\s*"?(?P<name>.*?)"?\s*\[(?P<kind>[A-Za-z]+):(?P<address>[^\]]*)\]\s*$')


def recipient(entry: str) -> str:
    """An inbox rule's recipient as Exchange writes it, ``"Name" [SMTP:address]`` or ``"Name" [EX:/o=...]``:
    the SMTP address, or for a directory recipient (EX, no address given) its name; anything else as is."""
    match = _RECIPIENT.match(entry)
    if match is None:
        return entry.strip()
    if match["kind"].upper() == "SMTP":
        return match["address"].strip()
    return match["name"].strip() or match["address"].strip()


def _recipients(value: Any) -> tuple[str, ...]:
    return tuple(recipient(v) for v in _strings(value))


def inbox_rule_from(obj: Any, *, hidden: bool = False) -> InboxRule:
    p = properties(obj)
    return InboxRule(
        identity=str(p.get("Identity") or p.get("RuleIdentity") or ""),
        name=str(p.get("Name") or ""),
        enabled=bool(p.get("Enabled")),
        forward_to=_recipients(p.get("ForwardTo")),
        forward_as_attachment_to=_recipients(p.get("ForwardAsAttachmentTo")),
        redirect_to=_recipients(p.get("RedirectTo")),
        delete_message=bool(p.get("DeleteMessage")),
        soft_delete_message=bool(p.get("SoftDeleteMessage")),
        move_to_folder=str(p["MoveToFolder"]) if p.get("MoveToFolder") else None,
        mark_as_read=bool(p.get("MarkAsRead")),
        subject_contains=_strings(p.get("SubjectContainsWords")),
        subject_or_body_contains=_strings(p.get("SubjectOrBodyContainsWords")),
        body_contains=_strings(p.get("BodyContainsWords")),
        hidden=hidden,
    )


def forwarding_from(obj: Any) -> Forwarding:
    """Get-Mailbox's forwarding: ForwardingSmtpAddress carries a lowercase ``smtp:`` prefix."""
    p = properties(obj)
    smtp = str(p.get("ForwardingSmtpAddress") or "").strip()
    if smtp.lower().startswith("smtp:"):
        smtp = smtp[5:]
    address = str(p.get("ForwardingAddress") or "").strip()
    return Forwarding(
        smtp_address=smtp or None,
        address=address or None,
        deliver_and_forward=bool(p.get("DeliverToMailboxAndForward")),
    )


def mailbox_permission_from(obj: Any) -> MailboxPermission:
    p = properties(obj)
    return MailboxPermission(
        user=str(p.get("User") or ""),
        rights=_strings(p.get("AccessRights")),
        inherited=bool(p.get("IsInherited")),
        deny=bool(p.get("Deny")),
    )


def recipient_permission_from(obj: Any) -> RecipientPermission:
    p = properties(obj)
    return RecipientPermission(
        trustee=str(p.get("Trustee") or ""),
        rights=_strings(p.get("AccessRights")),
        access_control_type=str(p.get("AccessControlType") or "Allow"),
        inherited=bool(p.get("IsInherited")),
    )


def _additional(p: dict[str, Any]) -> dict[str, Any]:
    """Graph SDK objects keep what their type does not declare in AdditionalProperties (a dictionary)."""
    extra = p.get("AdditionalProperties")
    return {str(k): v for k, v in extra.items()} if isinstance(extra, dict) else {}


_METHOD_FIELDS = ("phoneType", "phoneNumber", "deviceTag", "phoneAppVersion", "model", "aaGuid", "emailAddress")


def auth_method_from(obj: Any) -> AuthMethod:
    """One sign-in method: its @odata.type and created time, typed or in AdditionalProperties (both occur)."""
    p = properties(obj)
    extra = _additional(p)
    created = p.get("CreatedDateTime") or extra.get("createdDateTime")
    return AuthMethod(
        id=str(p.get("Id") or ""),
        odata_type=str(extra.get("@odata.type") or ""),
        display_name=str(extra["displayName"]) if extra.get("displayName") else None,
        created_at=parse_ps_datetime(created),
        detail={k: str(extra[k]) for k in _METHOD_FIELDS if extra.get(k) is not None},
    )


def oauth_grant_from(obj: Any) -> OAuthGrant:
    """A delegated grant; Scope is one space-separated string (Microsoft's own examples start with a space)."""
    p = properties(obj)
    return OAuthGrant(
        id=str(p.get("Id") or ""),
        client_id=str(p.get("ClientId") or ""),
        consent_type=str(p.get("ConsentType") or ""),
        resource_id=str(p.get("ResourceId") or ""),
        scopes=tuple(str(p.get("Scope") or "").split()),
    )


def service_principal_from(obj: Any) -> ServicePrincipal:
    """The app behind a grant. VerifiedPublisher is a nested object; whether it survives the remoting
    serialisation depth as one is not published, so a flattened (string) value counts as unknown."""
    p = properties(obj)
    publisher = p.get("VerifiedPublisher")
    verified = properties(publisher).get("DisplayName") if publisher is not None else None
    owner = p.get("AppOwnerOrganizationId")
    return ServicePrincipal(
        id=str(p.get("Id") or ""),
        display_name=str(p.get("DisplayName") or ""),
        app_id=str(p.get("AppId") or ""),
        owner_tenant_id=str(owner).lower() if owner else None,
        verified_publisher=str(verified) if verified else None,
    )


def tenant_cap(settings: Settings, budget: RunspaceBudget) -> int:
    """The runspaces one tenant's pool may hold when it shares the process's budget with others."""
    return min(settings.ps_tenant_pool_size or settings.ps_pool_size, budget.total)


class PowerShellBridge:
    """:class:`~service.powershell.port.TenantGateway` over pypsrp and a warm pool."""

    def __init__(
        self, settings: Settings, *, pool: WarmPool | None = None, budget: RunspaceBudget | None = None
    ) -> None:
        self.settings = settings
        self.options = EndpointOptions.from_settings(settings)
        self.pool = pool or WarmPool(
            self.options,
            size=settings.ps_pool_size if budget is None else tenant_cap(settings, budget),
            call_timeout=settings.ps_call_timeout,
            recycle_after=settings.ps_recycle_after,
            lazy=settings.ps_open_lazily,
            breaker=CircuitBreaker(threshold=settings.ps_breaker_threshold, interval=settings.ps_breaker_interval),
            budget=budget,
        )
        self.backend = settings.password_backend.value

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.pool.start()

    async def close(self) -> None:
        await self.pool.close()

    async def probe(self) -> None:
        await self.pool.probe()

    def stats(self) -> PoolStats:
        return self.pool.stats()

    @property
    def circuit_state(self) -> str:
        return self.pool.breaker.state.value

    # --- the remote call --------------------------------------------------------------------------

    async def _run(self, *invocations: c.Invocation) -> RawResult:
        name = invocations[-1].name
        started = time.perf_counter()
        try:
            result = await self.pool.call(tuple(invocations))
        except BridgeError as error:
            metrics.REMOTE_DURATION.labels(cmdlet=name).observe(time.perf_counter() - started)
            metrics.REMOTE_ERRORS.labels(cmdlet=name, error_class=type(error).__name__).inc()
            log.info(
                "remote_call",
                cmdlet=name,
                duration_ms=round((time.perf_counter() - started) * 1000, 1),
                outcome="failed",
                error_class=type(error).__name__,
                retryable=error.retryable,
            )
            raise
        metrics.REMOTE_DURATION.labels(cmdlet=name).observe(time.perf_counter() - started)
        if result.records:
            metrics.REMOTE_ERRORS.labels(cmdlet=name, error_class="ErrorRecord").inc()
        log.info(
            "remote_call",
            cmdlet=name,
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
            outcome="error_records" if result.records else "ok",
            records=len(result.records),
        )
        for warning in result.warnings:
            log.info("remote_warning", cmdlet=name, warning=warning[:300])
        delay = micro_delay(result.warnings)
        if delay is not None:
            metrics.REMOTE_ERRORS.labels(cmdlet=name, error_class="MicroDelay").inc()
            log.warning("remote_slowed_down", cmdlet=name, delay_s=delay)
            self.pool.slow_down(delay)
        return result

    @staticmethod
    def _first_error(result: RawResult, cmdlet: str) -> Classified | None:
        if not result.records:
            return None
        terminating = [r for r in result.records if r.terminating]
        return classify((terminating or result.records)[0], cmdlet=cmdlet)

    def _raise_errors(self, result: RawResult, cmdlet: str) -> None:
        classified = self._first_error(result, cmdlet)
        if classified is not None:
            raise classified.error

    # --- Exchange Online ----------------------------------------------------------------------------

    async def get_restriction(self, address: str) -> Restriction | None:
        result = await self._run(c.GET_BLOCKED_SENDER(SenderAddress=address))
        self._raise_errors(result, c.GET_BLOCKED_SENDER.name)
        return restriction_from(result.output[0]) if result.output else None

    async def list_restrictions(self) -> list[Restriction]:
        result = await self._run(c.GET_BLOCKED_SENDER())
        self._raise_errors(result, c.GET_BLOCKED_SENDER.name)
        return [restriction_from(obj) for obj in result.output]

    async def remove_restriction(self, address: str, *, reason: str | None = None) -> bool:
        """Unblock; False when the sender was not on the list (already unblocked: not an error)."""
        values: dict[str, Any] = {"SenderAddress": address}
        if reason:
            values["Reason"] = reason[:256]
        result = await self._run(c.REMOVE_BLOCKED_SENDER(**values))
        classified = self._first_error(result, c.REMOVE_BLOCKED_SENDER.name)
        if classified is None:
            return True
        if isinstance(classified.error, MailboxNotFound):
            return False
        raise classified.error

    async def accepted_domains(self) -> list[str]:
        result = await self._run(c.GET_ACCEPTED_DOMAIN())
        self._raise_errors(result, c.GET_ACCEPTED_DOMAIN.name)
        return [str(properties(o).get("DomainName") or properties(o).get("Name")).lower() for o in result.output]

    async def list_inbox_rules(self, mailbox: str) -> list[InboxRule]:
        """All rules; the ones only -IncludeHidden returns are marked hidden (nothing else marks them)."""
        shown = await self._run(c.GET_INBOX_RULE(Mailbox=mailbox))
        self._raise_errors(shown, c.GET_INBOX_RULE.name)
        everything = await self._run(c.GET_INBOX_RULE(Mailbox=mailbox, IncludeHidden=True))
        self._raise_errors(everything, c.GET_INBOX_RULE.name)
        visible = {inbox_rule_from(obj).identity for obj in shown.output}
        rules = [inbox_rule_from(obj) for obj in everything.output]
        return [replace(rule, hidden=rule.identity not in visible) for rule in rules]

    async def get_forwarding(self, mailbox: str) -> Forwarding:
        result = await self._run(c.GET_MAILBOX(Identity=mailbox))
        self._raise_errors(result, c.GET_MAILBOX.name)
        # The answer is taken only from the mailbox that names this address: forwarding judged on another
        # mailbox's settings would clear or keep the wrong thing, and nothing else ties output to request.
        wanted = mailbox.lower()
        for obj in result.output:
            p = properties(obj)
            names = {str(p.get(k) or "").lower() for k in ("PrimarySmtpAddress", "UserPrincipalName")}
            if wanted in names:
                return forwarding_from(obj)
        raise MailboxNotFound(
            f"Get-Mailbox returned {len(result.output)} mailbox(es), none of them {mailbox}", cmdlet=c.GET_MAILBOX.name
        )

    async def list_mailbox_permissions(self, mailbox: str) -> list[MailboxPermission]:
        result = await self._run(c.GET_MAILBOX_PERMISSION(Identity=mailbox))
        self._raise_errors(result, c.GET_MAILBOX_PERMISSION.name)
        return [mailbox_permission_from(obj) for obj in result.output]

    async def list_send_as(self, mailbox: str) -> list[RecipientPermission]:
        result = await self._run(c.GET_RECIPIENT_PERMISSION(Identity=mailbox))
        self._raise_errors(result, c.GET_RECIPIENT_PERMISSION.name)
        return [recipient_permission_from(obj) for obj in result.output]

    async def disable_inbox_rule(self, mailbox: str, identity: str) -> None:
        result = await self._run(c.DISABLE_INBOX_RULE(Mailbox=mailbox, Identity=identity, Force=True, Confirm=False))
        self._raise_errors(result, c.DISABLE_INBOX_RULE.name)

    async def clear_forwarding(self, mailbox: str) -> None:
        if self.options.runner_functions:
            result = await self._run(c.CLEAR_RUNNER_FORWARDING(Identity=mailbox))
            self._raise_errors(result, c.CLEAR_RUNNER_FORWARDING.name)
            return
        result = await self._run(
            c.SET_MAILBOX(
                Identity=mailbox,
                ForwardingSmtpAddress=None,
                ForwardingAddress=None,
                DeliverToMailboxAndForward=False,
                Confirm=False,
            )
        )
        self._raise_errors(result, c.SET_MAILBOX.name)

    # --- the directory --------------------------------------------------------------------------------

    async def get_user(self, upn: str) -> UserInfo | None:
        result = await self._run(c.GET_MG_USER(UserId=upn, Property=list(c.USER_PROPERTIES)))
        classified = self._first_error(result, c.GET_MG_USER.name)
        if classified is not None:
            if isinstance(classified.error, MailboxNotFound):
                return None
            raise classified.error
        if not result.output:
            return None
        p = properties(result.output[0])
        return UserInfo(
            upn=str(p.get("UserPrincipalName") or upn).lower(),
            on_premises_sync=bool(p.get("OnPremisesSyncEnabled")),
            account_enabled=p.get("AccountEnabled") is not False,
            object_id=str(p["Id"]) if p.get("Id") else None,
        )

    async def user_exists(self, upn: str) -> bool:
        return await self.get_user(upn) is not None

    async def list_auth_methods(self, upn: str) -> list[AuthMethod]:
        result = await self._run(c.GET_AUTH_METHODS(UserId=upn, All=True))
        self._raise_errors(result, c.GET_AUTH_METHODS.name)
        return [auth_method_from(obj) for obj in result.output]

    async def list_oauth_grants(self, upn: str) -> list[OAuthGrant]:
        """The user's own consents (consentType Principal), found by their object id."""
        user = await self.get_user(upn)
        if user is None:
            raise MailboxNotFound(f"Get-MgUser found no user {upn}", cmdlet=c.GET_MG_USER.name)
        if not user.object_id or not is_guid(user.object_id):
            raise BridgeError(f"Get-MgUser returned no object id for {upn}", cmdlet=c.GET_MG_USER.name)
        object_id = user.object_id.strip().lower()
        result = await self._run(c.GET_OAUTH_GRANTS(Filter=f"principalId eq '{object_id}'", All=True))
        self._raise_errors(result, c.GET_OAUTH_GRANTS.name)
        return [oauth_grant_from(obj) for obj in result.output]

    async def get_service_principal(self, object_id: str) -> ServicePrincipal | None:
        """The app a grant names; None when it is gone (deleted since the consent)."""
        result = await self._run(
            c.GET_SERVICE_PRINCIPAL(ServicePrincipalId=object_id, Property=list(c.SERVICE_PRINCIPAL_PROPERTIES))
        )
        classified = self._first_error(result, c.GET_SERVICE_PRINCIPAL.name)
        if classified is not None:
            if isinstance(classified.error, MailboxNotFound):
                return None
            raise classified.error
        return service_principal_from(result.output[0]) if result.output else None

    async def reset_password(self, upn: str, password: str, *, force_change: bool = True) -> None:
        with secret_in_flight(password):
            if self.backend == "ad":
                await self._reset_in_ad(upn, password, force_change=force_change)
            else:
                await self._reset_in_graph(upn, password, force_change=force_change)

    async def _reset_in_graph(self, upn: str, password: str, *, force_change: bool) -> None:
        if self.options.runner_functions:
            # The runner's wrapper takes a SecureString, so no transcript on the runner host holds it.
            result = await self._run(
                c.SET_RUNNER_PASSWORD(
                    UserId=upn, NewPassword=Secret(password), ForceChangePasswordNextSignIn=force_change
                )
            )
            self._raise_errors(result, c.SET_RUNNER_PASSWORD.name)
            return
        profile = {"Password": password, "ForceChangePasswordNextSignIn": force_change}
        result = await self._run(c.UPDATE_MG_USER(UserId=upn, PasswordProfile=profile))
        self._raise_errors(result, c.UPDATE_MG_USER.name)

    async def _reset_in_ad(self, upn: str, password: str, *, force_change: bool) -> None:
        result = await self._run(
            c.GET_AD_USER(LDAPFilter=f"(userPrincipalName={c.ldap_escape(upn)})"),
            c.SET_AD_PASSWORD(Reset=True, NewPassword=Secret(password), PassThru=True),
            c.SET_AD_USER(ChangePasswordAtLogon=force_change, PassThru=True),
        )
        self._raise_errors(result, c.SET_AD_PASSWORD.name)
        if not result.output:
            raise MailboxNotFound(f"no on-premises AD account has userPrincipalName {upn}", cmdlet=c.GET_AD_USER.name)

    async def revoke_sessions(self, upn: str) -> None:
        result = await self._run(c.REVOKE_SESSIONS(UserId=upn))
        self._raise_errors(result, c.REVOKE_SESSIONS.name)
