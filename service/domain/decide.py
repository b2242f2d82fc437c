"""What a case does next: the engine's decisions as pure functions.

The worker runs one step at a time. Before the step it asks :func:`next_step` which step is
due and :func:`begin` whether starting it moves the case to a new state; after the step it
hands the result to :func:`decide`, which returns a :class:`Decision` that persistence
applies in one transaction. Approve, cancel and retry are decided here too, so the API and
the worker share one set of rules. Nothing here reads a clock, a database or the network:
``now`` and the jitter ``spread`` come in as arguments, so tests skip time instead of
sleeping.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from service.domain.audit import Actor
from service.domain.findings import CONTAINMENT_WORK, Finding, needs_review, to_contain
from service.domain.plan import resume_step_after
from service.domain.retry import RetryPolicy, next_attempt_at
from service.domain.states import (
    DONE_STATUSES,
    PREPARING_STEPS,
    STEP_STATE,
    TERMINAL_STATES,
    CaseOutcome,
    CaseState,
    StepName,
    StepStatus,
)
from service.domain.tenant import Restriction
from service.domain.transitions import Action, apply, can
from service.errors import ApproverIsRequester, InvalidTransition

#: Codes after which a person must act; retrying on our own would not help.
ESCALATING_CODES: frozenset[str] = frozenset(
    {
        "unblock_limit_exceeded",
        "permission_denied",
        "synced_user",
        "reblocked",
        "still_restricted",
        "containment_not_verified",
    }
)

#: What the person who picks up an escalated or failed case should do, by error code.
GUIDANCE: dict[str, str] = {
    "unblock_limit_exceeded": (
        "The sender has been unblocked as often as Exchange Online allows. Only Microsoft support "
        "can release it now: open a support request, then retry this case once they have."
    ),
    "permission_denied": (
        "The remoting account lacks a role this command needs (Security Administrator or Organization "
        "Management to unblock, User Administrator to reset passwords). Grant it, then retry."
    ),
    "synced_user": (
        "The account is synced from on-premises Active Directory, so its password must be reset there. "
        "Set UNBLOCK_PASSWORD_BACKEND=ad (or reset it by hand), then retry."
    ),
    "reblocked": (
        "The sender was restricted again while sending was coming back: the account is probably still "
        "compromised. Check its sign-ins, inbox rules and app passwords before retrying."
    ),
    "still_restricted": (
        "Remove-BlockedSenderAddress reported success but the sender is still on the restricted list. "
        "Check the Microsoft 365 Defender portal (Restricted entities), then retry."
    ),
    "mailbox_not_found": "The tenant has no such user or mailbox. Check the address in the ticket.",
    "findings_need_review": (
        "The sender is not on the restricted list, but the investigation found what only a person can judge "
        "(a new sign-in method, an app with access to mail, or a delegate); see the case's findings. Remove what "
        "is not the user's own, then retry to investigate again."
    ),
    "containment_not_verified": (
        "A containment change did not hold when read back (an inbox rule still enabled, or forwarding still "
        "set). Check the mailbox by hand, then retry."
    ),
    "foreign_mailbox": (
        "The mailbox's domain is not one of the tenant's accepted domains, so nothing was sent for it. "
        "Check the address in the ticket (or UNBLOCK_ALLOWED_DOMAINS)."
    ),
}


def same_principal(one: Actor, other: Actor) -> bool:
    """Are these the same principal? By kind and id; by name for cases opened before ids were recorded."""
    if one.id and other.id:
        return (one.kind, one.id) == (other.kind, other.id)
    return one.name == other.name


def check_four_eyes(opener: Actor, approver: Actor, *, allow_self: bool) -> None:
    """Approval is a second person's decision, unless the operator allowed self-approval (small teams)."""
    if not allow_self and same_principal(opener, approver):
        raise ApproverIsRequester(
            f"{approver.name} opened this case and cannot also approve it; another person must "
            "(or set UNBLOCK_APPROVAL_ALLOW_SELF=true)"
        )


@dataclass(frozen=True, slots=True)
class StepView:
    name: StepName
    status: StepStatus
    attempts: int = 0
    failures: int = 0


@dataclass(frozen=True, slots=True)
class CaseView:
    """The parts of a case the decisions look at."""

    state: CaseState
    steps: tuple[StepView, ...]
    require_approval: bool = False
    sending_restored_by: datetime | None = None
    findings: tuple[Finding, ...] = ()
    outcome: CaseOutcome | None = None

    def step(self, name: StepName) -> StepView:
        for step in self.steps:
            if step.name is name:
                return step
        raise KeyError(name)

    def with_step(self, updated: StepView) -> CaseView:
        return replace(self, steps=tuple(updated if s.name is updated.name else s for s in self.steps))


@dataclass(frozen=True, slots=True)
class Timing:
    propagation_wait: float
    recheck_interval: float


@dataclass(frozen=True, slots=True)
class Succeeded:
    """A step did its work. ``restriction`` is what a lookup found (None: not listed); ``findings``, the
    case's findings after an investigation or a containment step (None: they did not change)."""

    restriction: Restriction | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    findings: tuple[Finding, ...] | None = None


@dataclass(frozen=True, slots=True)
class Failed:
    code: str
    message: str
    retryable: bool
    retry_after: float | None = None

    def as_error(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "retryable": self.retryable}


StepResult = Succeeded | Failed


@dataclass(frozen=True, slots=True)
class StepChange:
    name: StepName
    status: StepStatus
    error: dict[str, Any] | None = None
    reset_counters: bool = False
    failures: int | None = None  # the new count of attempt-using failures, when it changes


@dataclass(frozen=True, slots=True)
class Decision:
    """Everything one transaction must write after a step, an approval, a cancel or a retry."""

    state: CaseState
    action: Action | None
    steps: tuple[StepChange, ...]
    next_action_at: datetime | None
    outcome: CaseOutcome | None = None
    last_error: dict[str, Any] | None = None
    restriction: dict[str, Any] | None = None
    sending_restored_by: datetime | None = None
    summary: str = ""
    findings: tuple[Finding, ...] | None = None  # the case's findings, when they change

    @property
    def changes_state(self) -> bool:
        return self.action is not None


def next_step(case: CaseView) -> StepName | None:
    """The step the worker should run now, or None when the case waits for a person or is done."""
    if case.state in TERMINAL_STATES or case.state is CaseState.awaiting_approval:
        return None
    for step in case.steps:
        if step.status not in DONE_STATUSES:
            return step.name
    return None


#: Steps that only read the tenant: sending one again changes nothing there, so the worker may send
#: it before the write that starts it commits (:func:`due_after`), and drop the answer if that write
#: does not start it after all.
READ_STEPS: frozenset[StepName] = frozenset({StepName.investigate, StepName.check_restriction, StepName.verify})

#: Steps whose change at the tenant is the same however often it is made: signing the user out
#: everywhere, disabling a rule, clearing forwarding. The worker sends one as soon as the write that
#: starts it holds the case's row (its compare-and-set has won, so no cancel or other worker can
#: come between), before that write commits. Should the commit then fail, the step runs again
#: later and makes the same change again. Never the reset (its password must be stored first) nor
#: the unblock (a daily limit, and a retry that must know an attempt was made).
EARLY_EFFECTS: frozenset[StepName] = frozenset(
    {StepName.revoke_sessions, StepName.disable_inbox_rules, StepName.remove_forwarding}
)


def due_after(case: CaseView, decision: Decision, now: datetime) -> StepName | None:
    """The step ``decision`` makes due at once on ``case``: what the worker starts next in the
    transaction that writes the decision, or None when the case waits, ends or stops for a person.

    The writer sets the case's state and the step statuses the decision names, so this is
    :func:`next_step` on the case as that write leaves it, known before the write is sent.
    """
    if decision.next_action_at is None or decision.next_action_at > now:
        return None
    status = {change.name: change.status for change in decision.steps}
    steps = tuple(replace(s, status=status.get(s.name, s.status)) for s in case.steps)
    return next_step(replace(case, state=decision.state, steps=steps))


#: How a case enters the state a preparing step (or the check) runs in.
_ENTER: dict[CaseState, Action] = {
    CaseState.securing_account: Action.secure,
    CaseState.investigating: Action.investigate,
    CaseState.containing: Action.contain,
    CaseState.checking_restriction: Action.check,
}


def begin(case: CaseView, step: StepName) -> Action | None:
    """The state change that starting ``step`` implies (received -> securing, and so on)."""
    target = STEP_STATE[step]
    if case.state is target:
        return None
    action = _ENTER.get(target)
    if action is None or not can(action, case.state):
        return None
    return action


def needs_precheck(step: StepView) -> bool:
    """An unblock retried after an unknown outcome looks at the list before removing again."""
    return step.name is StepName.unblock and step.attempts > 1


def _later(now: datetime, seconds: float, cap: datetime | None) -> datetime:
    at = now + timedelta(seconds=seconds)
    return min(at, cap) if cap is not None else at


def decide(
    case: CaseView,
    step: StepName,
    result: StepResult,
    now: datetime,
    *,
    policy: RetryPolicy,
    timing: Timing,
    spread: float = 0.5,
) -> Decision:
    """The decision after ``step`` ran with ``result`` (the step is already marked running)."""
    if isinstance(result, Failed):
        return _on_failure(case, step, result, now, policy=policy, spread=spread)
    if step in PREPARING_STEPS:
        return _after_preparing(case, step, result, now)
    if step is StepName.check_restriction:
        return _after_check(case, result, now)
    if step is StepName.unblock:
        return _move(case, Action.verify, (StepChange(step, StepStatus.succeeded),), now, "unblocked")
    if step is StepName.verify:
        return _after_verify(case, result, now, policy=policy, timing=timing, spread=spread)
    return _after_recheck(case, result, now, timing=timing)


def _move(
    case: CaseView,
    action: Action,
    steps: tuple[StepChange, ...],
    next_at: datetime | None,
    summary: str,
    **fields: Any,
) -> Decision:
    return Decision(
        state=apply(action, case.state),
        action=action,
        steps=steps,
        next_action_at=next_at,
        summary=summary,
        **fields,
    )


def _stay(
    case: CaseView, steps: tuple[StepChange, ...], next_at: datetime | None, summary: str, **fields: Any
) -> Decision:
    return Decision(state=case.state, action=None, steps=steps, next_action_at=next_at, summary=summary, **fields)


_DONE_SUMMARY: dict[CaseState, str] = {
    CaseState.investigating: "account secured; investigating the mailbox",
    CaseState.containing: "containing what was found",
    CaseState.checking_restriction: "mailbox secured",
}


def _after_preparing(case: CaseView, step: StepName, result: Succeeded, now: datetime) -> Decision:
    """A step before the check is done: run the next one, moving the case on when its state differs.

    A containment step the findings leave nothing to do (no suspicious rule to disable, no external
    forwarding to clear) is skipped here, in the same decision: it would send no command, and
    running it would cost the case a write of its own for a step that does nothing.
    """
    names = [s.name for s in case.steps]
    later = [case.step(n) for n in names[names.index(step) + 1 :]]
    idle = (
        set()
        if result.findings is None
        else {
            s.name
            for s in later
            if s.name in CONTAINMENT_WORK and s.status is StepStatus.pending and not to_contain(s.name, result.findings)
        }
    )
    done = (
        StepChange(step, StepStatus.succeeded),
        *(StepChange(s.name, StepStatus.skipped) for s in later if s.name in idle),
    )
    following = next(
        (s.name for s in later if s.status not in DONE_STATUSES and s.name not in idle), StepName.check_restriction
    )
    target = STEP_STATE[following]
    if target is case.state:
        return _stay(case, done, now, f"{step.value} done", findings=result.findings)
    return _move(case, _ENTER[target], done, now, _DONE_SUMMARY[target], findings=result.findings)


def _skip_rest(case: CaseView, after: StepName) -> tuple[StepChange, ...]:
    names = [s.name for s in case.steps]
    later = names[names.index(after) + 1 :]
    return tuple(StepChange(n, StepStatus.skipped) for n in later if case.step(n).status not in DONE_STATUSES)


def _review_summary(findings: list[Finding]) -> str:
    return "; ".join(f.summary for f in findings)


def _after_check(case: CaseView, result: Succeeded, now: datetime) -> Decision:
    done = StepChange(StepName.check_restriction, StepStatus.succeeded)
    review = needs_review(case.findings)
    if result.restriction is None:
        rest = (done, *_skip_rest(case, StepName.check_restriction))
        if review:
            error = {
                "code": "findings_need_review",
                "message": f"{GUIDANCE['findings_need_review']} Found: {_review_summary(review)}.",
                "retryable": False,
            }
            return _move(
                case,
                Action.escalate,
                rest,
                None,
                "not restricted, but findings need a person",
                outcome=CaseOutcome.not_restricted,
                last_error=error,
            )
        return _move(
            case, Action.resolve, rest, None, "sender is not on the restricted list", outcome=CaseOutcome.not_restricted
        )
    restriction = result.restriction.as_case_field()
    if review:
        summary = f"restricted; findings need a person before the unblock: {_review_summary(review)}"
        return _move(case, Action.await_approval, (done,), None, summary, restriction=restriction)
    if case.require_approval:
        return _move(
            case,
            Action.await_approval,
            (done,),
            None,
            "restricted; waiting for approval",
            restriction=restriction,
        )
    return _move(case, Action.unblock, (done,), now, "restricted; unblocking", restriction=restriction)


def _after_verify(
    case: CaseView, result: Succeeded, now: datetime, *, policy: RetryPolicy, timing: Timing, spread: float
) -> Decision:
    if result.restriction is not None:
        still = Failed(
            "still_restricted",
            "the sender is still on the restricted list after Remove-BlockedSenderAddress",
            retryable=True,
        )
        return _on_failure(case, StepName.verify, still, now, policy=policy, spread=spread)
    restored_by = now + timedelta(seconds=timing.propagation_wait)
    done = StepChange(StepName.verify, StepStatus.succeeded)
    if timing.propagation_wait <= 0:
        return _move(
            case,
            Action.resolve,
            (done, StepChange(StepName.propagation, StepStatus.succeeded)),
            None,
            "unblocked; no propagation wait configured",
            outcome=CaseOutcome.unblocked,
            sending_restored_by=restored_by,
        )
    return _move(
        case,
        Action.wait,
        (done, StepChange(StepName.propagation, StepStatus.running)),
        _later(now, timing.recheck_interval, restored_by),
        "unblocked; waiting for sending to come back",
        sending_restored_by=restored_by,
    )


def _after_recheck(case: CaseView, result: Succeeded, now: datetime, *, timing: Timing) -> Decision:
    if result.restriction is not None:
        error = {"code": "reblocked", "message": GUIDANCE["reblocked"], "retryable": False}
        return _move(
            case,
            Action.escalate,
            (StepChange(StepName.propagation, StepStatus.failed, error),),
            None,
            "re-blocked while waiting",
            outcome=CaseOutcome.escalated,
            last_error=error,
            restriction=result.restriction.as_case_field(),
        )
    restored_by = case.sending_restored_by or now
    if now >= restored_by:
        return _move(
            case,
            Action.resolve,
            (StepChange(StepName.propagation, StepStatus.succeeded),),
            None,
            "sending restored",
            outcome=CaseOutcome.unblocked,
        )
    return _stay(
        case,
        (StepChange(StepName.propagation, StepStatus.running),),
        _later(now, timing.recheck_interval, restored_by),
        "still unblocked; waiting",
    )


def _on_failure(
    case: CaseView, step: StepName, failed: Failed, now: datetime, *, policy: RetryPolicy, spread: float
) -> Decision:
    view = case.step(step)
    outage = policy.is_outage(failed.code)  # nothing was done: it does not use up an attempt
    failures = view.failures if outage else view.failures + 1
    escalates = failed.code in ESCALATING_CODES
    if failed.retryable and policy.retries_left(failures, failed.code, attempts=view.attempts):
        error = failed.as_error()
        pending = StepStatus.running if step is StepName.propagation else StepStatus.pending
        backoff_for = max(view.attempts, 1) if outage else failures
        return _stay(
            case,
            (StepChange(step, pending, error, failures=failures),),
            next_attempt_at(policy, backoff_for, now, retry_after=failed.retry_after, spread=spread),
            f"{step.value} failed ({failed.code}); retrying",
            last_error=error,
        )
    message = failed.message.rstrip(". ")
    if failed.retryable:
        message = f"{message} (gave up after {view.attempts if outage else failures} attempts)"
    guidance = GUIDANCE.get(failed.code)
    if guidance:
        message = f"{message}. {guidance}"
    error = {"code": failed.code, "message": message, "retryable": False}
    action, outcome = (Action.escalate, CaseOutcome.escalated) if escalates else (Action.fail, CaseOutcome.failed)
    return _move(
        case,
        action,
        (StepChange(step, StepStatus.failed, error, failures=failures),),
        None,
        f"{step.value} failed ({failed.code})",
        outcome=outcome,
        last_error=error,
    )


def approve(case: CaseView, now: datetime) -> Decision:
    return _move(case, Action.approve, (), now, "unblock approved")


def cancel(case: CaseView) -> Decision:
    pending = tuple(StepChange(s.name, StepStatus.skipped) for s in case.steps if s.status in (StepStatus.pending,))
    return _move(case, Action.cancel, pending, None, "cancelled", outcome=CaseOutcome.cancelled)


_RETRY_ACTION: dict[CaseState, Action] = {
    CaseState.securing_account: Action.retry_securing,
    CaseState.investigating: Action.retry_investigate,
    CaseState.containing: Action.retry_contain,
    CaseState.checking_restriction: Action.retry_check,
    CaseState.unblocking: Action.retry_unblock,
    CaseState.verifying: Action.retry_verify,
}


def retry(case: CaseView, now: datetime) -> Decision:
    """Resume a failed or escalated case at the step that stopped it; later steps start afresh."""
    retryable = {CaseState.failed, CaseState.escalated}
    if case.state not in retryable:
        raise InvalidTransition("retry", case.state.value, [s.value for s in retryable])
    failed = next((s for s in case.steps if s.status is StepStatus.failed), None)
    stopped_at = failed.name if failed else next_step(replace(case, state=CaseState.received))
    resume = resume_step_after(stopped_at or StepName.check_restriction)
    investigated = any(s.name is StepName.investigate for s in case.steps)
    if case.outcome is CaseOutcome.not_restricted and investigated:
        # Escalated for findings a person had to judge: once they have, look at the mailbox again.
        resume = StepName.investigate
    action = _RETRY_ACTION[STEP_STATE[resume]]
    names = [s.name for s in case.steps]
    again = tuple(StepChange(n, StepStatus.pending, None, reset_counters=True) for n in names[names.index(resume) :])
    return _move(case, action, again, now, f"retry from {resume.value}", outcome=None, last_error=None)
