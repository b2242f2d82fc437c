"""What each step does against the tenant, and how its outcome is reported to the decisions.

Every step is safe to repeat, because a worker can die after sending a command and before
recording its result: the password of a retried reset is the one sealed before the first try,
an unblock whose outcome is unknown looks at the list before removing again, the investigation
only reads, rules already disabled are left alone, and forwarding is cleared idempotently.
Containment reads back what it changed before it counts as done.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from service.domain.decide import Failed, StepResult, Succeeded
from service.domain.findings import (
    MAIL_SCOPES,
    ContainmentPlan,
    Finding,
    FindingAction,
    judge_auth_method,
    judge_forwarding,
    judge_grant,
    judge_mailbox_permission,
    judge_rule,
    judge_send_as,
    merged,
    needs_review,
    to_contain,
    with_actions,
)
from service.domain.plan import Actions
from service.domain.states import StepName, StepStatus
from service.errors import BridgeError, MailboxNotFound
from service.persistence.records import CaseSnapshot
from service.powershell.port import TenantGateway


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """A step's result for the decisions, and what the timeline should say about it."""

    result: StepResult
    detail: dict[str, Any] = field(default_factory=dict)


def failed(error: BridgeError) -> Failed:
    return Failed(code=error.code, message=error.message, retryable=error.retryable, retry_after=error.retry_after)


@dataclass(frozen=True, slots=True)
class StepContext:
    """What a step knows besides the case: the password to set, the tenant's domains, the time."""

    password: str | None = None
    precheck: bool = False
    domains: tuple[str, ...] = ()
    now: datetime = field(default_factory=lambda: datetime.now(UTC))


async def perform(step: StepName, case: CaseSnapshot, gateway: TenantGateway, context: StepContext) -> StepOutcome:
    try:
        return await _STEPS[step](case, gateway, context)
    except BridgeError as error:
        return StepOutcome(failed(error), {"cmdlet": error.cmdlet} if error.cmdlet else {})


async def _reset_password(case: CaseSnapshot, gateway: TenantGateway, context: StepContext) -> StepOutcome:
    if context.password is None:
        raise AssertionError("the reset step runs only with a sealed password")
    await gateway.reset_password(case.mailbox, context.password, force_change=True)
    return StepOutcome(Succeeded(), {"force_change_at_next_sign_in": True})


async def _revoke_sessions(case: CaseSnapshot, gateway: TenantGateway, context: StepContext) -> StepOutcome:
    await gateway.revoke_sessions(case.mailbox)
    return StepOutcome(Succeeded())


def _containment(case: CaseSnapshot) -> ContainmentPlan:
    return Actions.from_dict(case.actions).containment


async def _investigate(case: CaseSnapshot, gateway: TenantGateway, context: StepContext) -> StepOutcome:
    """Read what an attacker may have left (each read is one command), judge it, and say what will be done."""
    mailbox = case.mailbox
    # The reads queue for the pool's runspaces in this order, so the two that are two commands each go
    # first: the consents need the user's id (Get-MgUser, then Get-MgOauth2PermissionGrant) and the
    # rules are read twice (then with -IncludeHidden). On a pool of four, the eight reads then take
    # two rounds at the tenant instead of three.
    grants, rules, forwarding, delegates, send_as, methods = await asyncio.gather(
        gateway.list_oauth_grants(mailbox),
        gateway.list_inbox_rules(mailbox),
        gateway.get_forwarding(mailbox),
        gateway.list_mailbox_permissions(mailbox),
        gateway.list_send_as(mailbox),
        gateway.list_auth_methods(mailbox),
    )
    mail_grants = [g for g in grants if any(s.lower() in MAIL_SCOPES for s in g.scopes)]
    apps = await asyncio.gather(*(gateway.get_service_principal(g.client_id) for g in mail_grants))
    found: list[Finding | None] = [judge_rule(rule, context.domains) for rule in rules]
    found.append(judge_forwarding(forwarding, context.domains))
    found.extend(judge_mailbox_permission(p, mailbox) for p in delegates)
    found.extend(judge_send_as(p, mailbox) for p in send_as)
    found.extend(judge_auth_method(m, context.now) for m in methods)
    found.extend(judge_grant(g, app) for g, app in zip(mail_grants, apps, strict=True))
    findings = with_actions((f for f in found if f is not None), _containment(case))
    detail = {
        "findings": len(findings),
        "suspicious": sum(f.suspicious for f in findings),
        "review": len(needs_review(findings)),
    }
    return StepOutcome(Succeeded(findings=findings), detail)


def _findings_of(case: CaseSnapshot) -> tuple[Finding, ...]:
    return case.findings or ()


async def _disable_inbox_rules(case: CaseSnapshot, gateway: TenantGateway, context: StepContext) -> StepOutcome:
    """Disable the rules judged suspicious (never delete: a person can turn one back on), then read them back."""
    findings = _findings_of(case)
    if case.findings is None:  # no investigation on this case: judge the rules here
        rules = await gateway.list_inbox_rules(case.mailbox)
        findings = with_actions((judge_rule(r, context.domains) for r in rules), _containment(case))
    targets = to_contain(StepName.disable_inbox_rules, findings)
    if not targets:  # nothing to disable, so nothing to read back: two commands fewer at the tenant
        return StepOutcome(Succeeded(findings=tuple(findings)), {"disabled": []})
    for finding in targets:
        await gateway.disable_inbox_rule(case.mailbox, finding.key)
    enabled = {r.identity for r in await gateway.list_inbox_rules(case.mailbox) if r.enabled}
    still = [f for f in targets if f.key in enabled]
    if still:
        names = ", ".join(str(f.details.get("name", f.key)) for f in still)
        return StepOutcome(_not_held(f"inbox rules still enabled after Disable-InboxRule: {names}"))
    done = [replace(f, action=FindingAction.disabled, details={**f.details, "enabled": False}) for f in targets]
    detail = {"disabled": [str(f.details.get("name", f.key)) for f in targets]}
    return StepOutcome(Succeeded(findings=merged(findings, done)), detail)


async def _remove_forwarding(case: CaseSnapshot, gateway: TenantGateway, context: StepContext) -> StepOutcome:
    """Clear forwarding to outside the tenant, then read it back."""
    findings = _findings_of(case)
    if case.findings is None:
        judged = judge_forwarding(await gateway.get_forwarding(case.mailbox), context.domains)
        findings = with_actions([judged] if judged else [], _containment(case))
    target = next(iter(to_contain(StepName.remove_forwarding, findings)), None)
    if target is None:
        return StepOutcome(Succeeded(findings=findings), {"cleared": False})
    await gateway.clear_forwarding(case.mailbox)
    after = judge_forwarding(await gateway.get_forwarding(case.mailbox), context.domains)
    if after is not None and after.suspicious:
        return StepOutcome(_not_held(f"forwarding still set after clearing it: {after.summary}"))
    done = replace(target, action=FindingAction.cleared)
    return StepOutcome(Succeeded(findings=merged(findings, [done])), {"cleared": True})


def _not_held(message: str) -> Failed:
    return Failed(code="containment_not_verified", message=message, retryable=True)


def _account_confirmed(case: CaseSnapshot) -> bool:
    """Did a securing step already reach the account (so it exists)?"""
    return any(
        s.status is StepStatus.succeeded and s.name in (StepName.reset_password, StepName.revoke_sessions)
        for s in case.steps
    )


async def _check(case: CaseSnapshot, gateway: TenantGateway, context: StepContext) -> StepOutcome:
    if not _account_confirmed(case) and not await gateway.user_exists(case.mailbox):
        raise MailboxNotFound(f"the tenant has no user {case.mailbox}")
    restriction = await gateway.get_restriction(case.mailbox)
    return StepOutcome(Succeeded(restriction=restriction), {"restricted": restriction is not None})


async def _unblock(case: CaseSnapshot, gateway: TenantGateway, context: StepContext) -> StepOutcome:
    if context.precheck and await gateway.get_restriction(case.mailbox) is None:
        # An earlier attempt's outcome was unknown and the sender is off the list: it worked.
        return StepOutcome(Succeeded(), {"removed": False, "already_unblocked": True})
    reason = f"unblock-service case {case.id}" + (f" ticket {case.ticket_ref}" if case.ticket_ref else "")
    removed = await gateway.remove_restriction(case.mailbox, reason=reason)
    return StepOutcome(Succeeded(), {"removed": removed, **({} if removed else {"already_unblocked": True})})


async def _lookup(case: CaseSnapshot, gateway: TenantGateway, context: StepContext) -> StepOutcome:
    restriction = await gateway.get_restriction(case.mailbox)
    return StepOutcome(Succeeded(restriction=restriction), {"restricted": restriction is not None})


_STEPS = {
    StepName.reset_password: _reset_password,
    StepName.revoke_sessions: _revoke_sessions,
    StepName.investigate: _investigate,
    StepName.disable_inbox_rules: _disable_inbox_rules,
    StepName.remove_forwarding: _remove_forwarding,
    StepName.check_restriction: _check,
    StepName.unblock: _unblock,
    StepName.verify: _lookup,
    StepName.propagation: _lookup,
}
