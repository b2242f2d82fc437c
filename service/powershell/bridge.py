"""The PowerShell bridge: the tenant operations, each one remote pipeline of named commands.

Every value a user gave (an address, a password, a rule id) reaches PowerShell only as a bound
parameter of a command from :mod:`service.powershell.commands`; nothing here builds script
text. Results come back as the plain values of :mod:`service.domain.tenant`, and failures as
the classified errors of :mod:`service.errors`.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

from service import metrics
from service.config import Settings
from service.domain.tenant import InboxRule, Restriction, UserInfo
from service.errors import BridgeError, MailboxNotFound
from service.logging import get_logger, secret_in_flight
from service.powershell import commands as c
from service.powershell.circuit import CircuitBreaker
from service.powershell.classify import Classified, classify
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


def inbox_rule_from(obj: Any) -> InboxRule:
    p = properties(obj)
    return InboxRule(
        identity=str(p.get("Identity") or p.get("RuleIdentity") or ""),
        name=str(p.get("Name") or ""),
        enabled=bool(p.get("Enabled")),
        forward_to=_strings(p.get("ForwardTo")) + _strings(p.get("ForwardAsAttachmentTo")),
        redirect_to=_strings(p.get("RedirectTo")),
        delete_message=bool(p.get("DeleteMessage")),
        move_to_folder=str(p["MoveToFolder"]) if p.get("MoveToFolder") else None,
    )


class PowerShellBridge:
    """:class:`~service.powershell.port.TenantGateway` over pypsrp and a warm pool."""

    def __init__(self, settings: Settings, *, pool: WarmPool | None = None) -> None:
        self.settings = settings
        self.options = EndpointOptions.from_settings(settings)
        self.pool = pool or WarmPool(
            self.options,
            size=settings.ps_pool_size,
            call_timeout=settings.ps_call_timeout,
            recycle_after=settings.ps_recycle_after,
            lazy=settings.ps_open_lazily,
            breaker=CircuitBreaker(threshold=settings.ps_breaker_threshold, interval=settings.ps_breaker_interval),
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
        values: dict[str, Any] = {"SenderAddress": address, "Confirm": False}
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
        result = await self._run(c.GET_INBOX_RULE(Mailbox=mailbox))
        self._raise_errors(result, c.GET_INBOX_RULE.name)
        return [inbox_rule_from(obj) for obj in result.output]

    async def disable_inbox_rule(self, mailbox: str, identity: str) -> None:
        result = await self._run(c.DISABLE_INBOX_RULE(Mailbox=mailbox, Identity=identity, Confirm=False))
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
        result = await self._run(
            c.GET_MG_USER(UserId=upn, Property=["Id", "UserPrincipalName", "OnPremisesSyncEnabled", "AccountEnabled"])
        )
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
        )

    async def user_exists(self, upn: str) -> bool:
        return await self.get_user(upn) is not None

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
