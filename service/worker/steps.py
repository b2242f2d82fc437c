"""What each step does against the tenant, and how its outcome is reported to the decisions.

Every step is safe to repeat, because a worker can die after sending a command and before
recording its result: the password of a retried reset is the one sealed before the first try,
an unblock whose outcome is unknown looks at the list before removing again, rules already
disabled are left alone, and forwarding is cleared idempotently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from service.domain.decide import Failed, StepResult, Succeeded
from service.domain.states import StepName
from service.errors import BridgeError, MailboxNotFound
from service.persistence.records import CaseSnapshot
from service.powershell.port import TenantGateway


@dataclass(frozen=True, slots=True)
class Outcome:
    """A step's result for the decisions, and what the timeline should say about it."""

    result: StepResult
    detail: dict[str, Any] = field(default_factory=dict)


def failed(error: BridgeError) -> Failed:
    return Failed(code=error.code, message=error.message, retryable=error.retryable, retry_after=error.retry_after)


async def perform(
    step: StepName,
    case: CaseSnapshot,
    gateway: TenantGateway,
    *,
    password: str | None,
    precheck: bool,
) -> Outcome:
    try:
        return await _STEPS[step](case, gateway, password=password, precheck=precheck)
    except BridgeError as error:
        return Outcome(failed(error), {"cmdlet": error.cmdlet} if error.cmdlet else {})


async def _reset_password(
    case: CaseSnapshot, gateway: TenantGateway, *, password: str | None, precheck: bool
) -> Outcome:
    if password is None:
        raise AssertionError("the reset step runs only with a sealed password")
    await gateway.reset_password(case.mailbox, password, force_change=True)
    return Outcome(Succeeded(), {"force_change_at_next_sign_in": True})


async def _revoke_sessions(
    case: CaseSnapshot, gateway: TenantGateway, *, password: str | None, precheck: bool
) -> Outcome:
    await gateway.revoke_sessions(case.mailbox)
    return Outcome(Succeeded())


async def _disable_inbox_rules(
    case: CaseSnapshot, gateway: TenantGateway, *, password: str | None, precheck: bool
) -> Outcome:
    rules = await gateway.list_inbox_rules(case.mailbox)
    suspicious = [r for r in rules if r.suspicious]
    for rule in suspicious:
        await gateway.disable_inbox_rule(case.mailbox, rule.identity)
    return Outcome(Succeeded(), {"rules": len(rules), "disabled": [r.name for r in suspicious]})


async def _remove_forwarding(
    case: CaseSnapshot, gateway: TenantGateway, *, password: str | None, precheck: bool
) -> Outcome:
    await gateway.clear_forwarding(case.mailbox)
    return Outcome(Succeeded())


def _account_confirmed(case: CaseSnapshot) -> bool:
    """Did a securing step already reach the account (so it exists)?"""
    return any(s.status == "succeeded" and s.name in ("reset_password", "revoke_sessions") for s in case.steps)


async def _check(case: CaseSnapshot, gateway: TenantGateway, *, password: str | None, precheck: bool) -> Outcome:
    if not _account_confirmed(case) and not await gateway.user_exists(case.mailbox):
        raise MailboxNotFound(f"the tenant has no user {case.mailbox}")
    restriction = await gateway.get_restriction(case.mailbox)
    return Outcome(Succeeded(restriction=restriction), {"restricted": restriction is not None})


async def _unblock(case: CaseSnapshot, gateway: TenantGateway, *, password: str | None, precheck: bool) -> Outcome:
    if precheck and await gateway.get_restriction(case.mailbox) is None:
        # An earlier attempt's outcome was unknown and the sender is off the list: it worked.
        return Outcome(Succeeded(), {"removed": False, "already_unblocked": True})
    reason = f"unblock-service case {case.id}" + (f" ticket {case.ticket_ref}" if case.ticket_ref else "")
    removed = await gateway.remove_restriction(case.mailbox, reason=reason)
    return Outcome(Succeeded(), {"removed": removed, **({} if removed else {"already_unblocked": True})})


async def _lookup(case: CaseSnapshot, gateway: TenantGateway, *, password: str | None, precheck: bool) -> Outcome:
    restriction = await gateway.get_restriction(case.mailbox)
    return Outcome(Succeeded(restriction=restriction), {"restricted": restriction is not None})


_STEPS = {
    StepName.reset_password: _reset_password,
    StepName.revoke_sessions: _revoke_sessions,
    StepName.disable_inbox_rules: _disable_inbox_rules,
    StepName.remove_forwarding: _remove_forwarding,
    StepName.check_restriction: _check,
    StepName.unblock: _unblock,
    StepName.verify: _lookup,
    StepName.propagation: _lookup,
}
