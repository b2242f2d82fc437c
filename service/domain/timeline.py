"""What is written when a case changes, and which timeline events say so: one pure function each.

Every path that changes a case (the worker starting or finishing a step, a person approving,
cancelling or retrying, a step that finished after a cancel, a password revealed or expired)
is turned here into one :class:`CaseChange`: the case's new fields, the step rows, the timeline
events, what happens to the temporary password, the lease and the audit note. Persistence
writes a CaseChange in one transaction with one compare-and-set and decides nothing itself.

The event types are one enum (:class:`EventType`); the dashboard's script and the API's schema
are checked against it. ``state.changed`` has one detail shape everywhere: ``{"from", "to",
"reason"}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from service.domain.audit import Actor
from service.domain.decide import Decision, StepChange
from service.domain.states import TERMINAL_STATES, CaseState, StepName, StepStatus


class EventType(StrEnum):
    """Every timeline event type (``case_events.type``, the SSE event names, the dashboard's list)."""

    case_created = "case.created"
    state_changed = "state.changed"
    step_started = "step.started"
    step_succeeded = "step.succeeded"
    step_failed = "step.failed"
    step_skipped = "step.skipped"
    step_retry_scheduled = "step.retry_scheduled"
    step_pending = "step.pending"
    step_waiting = "step.waiting"
    step_finished_late = "step.finished_late"
    findings_recorded = "findings.recorded"
    tenant_assigned = "tenant.assigned"
    case_approved = "case.approved"
    case_cancelled = "case.cancelled"
    case_retried = "case.retried"
    credential_available = "credential.available"
    credential_revealed = "credential.revealed"
    credential_expired = "credential.expired"


class WebhookEventType(StrEnum):
    """What webhook subscribers can receive (a coarser view than the timeline)."""

    case_created = "case.created"
    case_state_changed = "case.state_changed"
    case_resolved = "case.resolved"
    case_failed = "case.failed"
    case_escalated = "case.escalated"
    credential_revealed = "credential.revealed"
    sender_restricted = "sender.restricted"


#: The webhook event a case's arrival in a terminal state adds to case.state_changed.
TERMINAL_WEBHOOK: dict[CaseState, WebhookEventType] = {
    CaseState.resolved: WebhookEventType.case_resolved,
    CaseState.failed: WebhookEventType.case_failed,
    CaseState.escalated: WebhookEventType.case_escalated,
}

#: Who acts when nobody but the service does.
WORKER = "worker"


class UserAction(StrEnum):
    approve = "approve"
    cancel = "cancel"
    retry = "retry"


_USER_EVENT = {
    UserAction.approve: EventType.case_approved,
    UserAction.cancel: EventType.case_cancelled,
    UserAction.retry: EventType.case_retried,
}


@dataclass(frozen=True, slots=True)
class TimelineEvent:
    type: EventType
    actor: str
    step: StepName | None = None
    from_state: CaseState | None = None
    to_state: CaseState | None = None
    detail: dict[str, Any] = field(default_factory=dict)


class CredentialMove(StrEnum):
    """What a change does to the case's sealed temporary password."""

    store = "store"  # seal a new one before the reset is sent
    apply = "apply"  # the reset took it: revealable until the TTL
    destroy = "destroy"  # the reset failed for good: it is no use to anyone
    reveal = "reveal"  # handed out once and destroyed
    expire = "expire"  # destroyed unrevealed at its TTL


@dataclass(frozen=True, slots=True)
class CredentialChange:
    move: CredentialMove
    key_id: str = ""
    sealed: bytes = b""
    expires_at: datetime | None = None
    by: str = ""  # who revealed it
    reason: str = ""  # why it was destroyed


@dataclass(frozen=True, slots=True)
class StepWrite:
    """A step row's new values: its status, and what starting or finishing it means for the counters."""

    name: StepName
    status: StepStatus
    error: dict[str, Any] | None = None
    attempts: int | None = None  # set when a start counts an attempt
    started: bool = False  # a (new) start: started_at = now
    reset_counters: bool = False
    failures: int | None = None


@dataclass(frozen=True, slots=True)
class LeaseChange:
    """The worker's hold on the case after the change: kept until ``until``, or let go (None)."""

    until: datetime | None


@dataclass(frozen=True, slots=True)
class AuditNote:
    actor: Actor
    action: str
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CaseChange:
    """Everything one transaction writes about one case."""

    before: CaseState
    after: CaseState
    decision: Decision | None = None  # outcome, last error, next action, restriction: from the decision
    steps: tuple[StepWrite, ...] = ()
    events: tuple[TimelineEvent, ...] = ()
    credential: CredentialChange | None = None
    lease: LeaseChange | None = None
    audit: AuditNote | None = None
    notify: bool = False  # wake workers elsewhere (the case is due again)

    @property
    def changes_state(self) -> bool:
        return self.after is not self.before


def state_changed(before: CaseState, after: CaseState, reason: str, actor: str) -> TimelineEvent:
    """The one shape of a state change, in the timeline and (as data) in webhooks."""
    return TimelineEvent(
        EventType.state_changed,
        actor,
        from_state=before,
        to_state=after,
        detail={"from": before.value, "to": after.value, "reason": reason},
    )


def step_event_type(change: StepChange) -> EventType:
    """Which event a step's new status is (a propagation wait without error is "waiting")."""
    if change.status is StepStatus.succeeded:
        return EventType.step_succeeded
    if change.status is StepStatus.failed:
        return EventType.step_failed
    if change.status is StepStatus.skipped:
        return EventType.step_skipped
    if change.name is StepName.propagation and change.status is StepStatus.running and not change.error:
        return EventType.step_waiting
    return EventType.step_retry_scheduled if change.error else EventType.step_pending


def _reason(decision: Decision) -> str:
    return decision.summary or (decision.action.value if decision.action else "")


def events_of(
    decision: Decision,
    *,
    before: CaseState,
    actor: str,
    step: StepName | None = None,
    step_detail: dict[str, Any] | None = None,
) -> tuple[TimelineEvent, ...]:
    """The timeline events a decision produces: one per step change, the findings if they changed, then the
    state change if any."""
    events: list[TimelineEvent] = []
    for change in decision.steps:
        kind = step_event_type(change)
        detail: dict[str, Any] = {}
        if change.error:
            detail["error"] = change.error
        if change.name is step and step_detail:
            detail.update(step_detail)
        if kind in (EventType.step_retry_scheduled, EventType.step_waiting) and decision.next_action_at:
            detail["next_action_at"] = decision.next_action_at.isoformat()
        events.append(TimelineEvent(kind, actor, step=change.name, detail=detail))
    if decision.findings is not None:
        findings = [finding.as_dict() for finding in decision.findings]
        events.append(TimelineEvent(EventType.findings_recorded, actor, step=step, detail={"findings": findings}))
    if decision.state is not before:
        events.append(state_changed(before, decision.state, _reason(decision), actor))
    return tuple(events)


def _writes(decision: Decision) -> tuple[StepWrite, ...]:
    return tuple(
        StepWrite(c.name, c.status, c.error, reset_counters=c.reset_counters, failures=c.failures)
        for c in decision.steps
    )


def _credential_after(decision: Decision, now: datetime, ttl: float) -> CredentialChange | None:
    """The reset step's outcome decides the temporary password's fate."""
    reset = next((c for c in decision.steps if c.name is StepName.reset_password), None)
    if reset is None:
        return None
    if reset.status is StepStatus.succeeded:
        return CredentialChange(CredentialMove.apply, expires_at=now + timedelta(seconds=ttl))
    if reset.status is StepStatus.failed:
        return CredentialChange(CredentialMove.destroy, reason="reset_failed")
    return None


def credential_events(credential: CredentialChange | None, actor: str) -> tuple[TimelineEvent, ...]:
    if credential is None:
        return ()
    if credential.move is CredentialMove.apply and credential.expires_at is not None:
        detail = {"expires_at": credential.expires_at.isoformat()}
        return (TimelineEvent(EventType.credential_available, actor, detail=detail),)
    if credential.move is CredentialMove.reveal:
        return (TimelineEvent(EventType.credential_revealed, credential.by, detail={"revealed_by": credential.by}),)
    if credential.move is CredentialMove.expire:
        return (TimelineEvent(EventType.credential_expired, actor),)
    return ()


# --- the paths that change a case -----------------------------------------------------------------


def step_started(
    *,
    before: CaseState,
    after: CaseState,
    step: StepName,
    attempt: int,
    first_start: bool,
    reason: str,
    lease_until: datetime,
    secret: CredentialChange | None = None,
) -> CaseChange:
    """The worker starts ``step`` (attempt ``attempt``), moving the case on if starting it says so."""
    events: list[TimelineEvent] = []
    if after is not before:
        events.append(state_changed(before, after, reason, WORKER))
    events.append(TimelineEvent(EventType.step_started, WORKER, step=step, detail={"attempt": attempt}))
    return CaseChange(
        before=before,
        after=after,
        steps=(StepWrite(step, StepStatus.running, attempts=attempt, started=first_start),),
        events=tuple(events),
        credential=secret,
        lease=LeaseChange(lease_until),
    )


def step_decided(
    decision: Decision,
    *,
    before: CaseState,
    step: StepName,
    step_detail: dict[str, Any] | None,
    now: datetime,
    credential_ttl: float,
    keep_lease_until: datetime | None,
) -> CaseChange:
    """The worker records a step's result and what the case does next."""
    credential = _credential_after(decision, now, credential_ttl)
    return CaseChange(
        before=before,
        after=decision.state,
        decision=decision,
        steps=_writes(decision),
        events=(
            *events_of(decision, before=before, actor=WORKER, step=step, step_detail=step_detail),
            *credential_events(credential, WORKER),
        ),
        credential=credential,
        lease=LeaseChange(keep_lease_until),
    )


def person_decided(
    decision: Decision, *, before: CaseState, action: UserAction, actor: Actor, mailbox: str
) -> CaseChange:
    """A person approved, cancelled or retried: their event, the state change, and an audit note.

    A retry reopens a finished case: any lease left on it is stale, so it is cleared.
    """
    event = TimelineEvent(_USER_EVENT[action], actor.name)
    audit_detail = {"from_state": before.value, "to_state": decision.state.value, "mailbox": mailbox}
    return CaseChange(
        before=before,
        after=decision.state,
        decision=decision,
        steps=_writes(decision),
        events=(event, *events_of(decision, before=before, actor=actor.name)),
        lease=LeaseChange(None) if before in TERMINAL_STATES else None,
        audit=AuditNote(actor, _USER_EVENT[action].value, audit_detail),
        notify=decision.next_action_at is not None,
    )


def finished_late(
    *, state: CaseState, step: StepName, status: StepStatus, error: dict[str, Any] | None, now: datetime, ttl: float
) -> CaseChange:
    """A step finished after the case was cancelled under it: the fact is kept, the state is not changed.

    A reset that did go through still makes its password revealable, for the configured TTL,
    so that whoever cancelled can hand it to the user (their password did change).
    """
    credential = (
        CredentialChange(CredentialMove.apply, expires_at=now + timedelta(seconds=ttl))
        if step is StepName.reset_password and status is StepStatus.succeeded
        else None
    )
    return CaseChange(
        before=state,
        after=state,
        steps=(StepWrite(step, status, error),),
        events=(
            TimelineEvent(EventType.step_finished_late, WORKER, step=step, detail={"status": status.value}),
            *credential_events(credential, WORKER),
        ),
        credential=credential,
    )


def credential_revealed(*, state: CaseState, actor: Actor) -> CaseChange:
    credential = CredentialChange(CredentialMove.reveal, by=actor.name)
    return CaseChange(
        before=state,
        after=state,
        events=credential_events(credential, WORKER),
        credential=credential,
        audit=AuditNote(actor, EventType.credential_revealed.value, {}),
    )


def credential_expired(*, state: CaseState) -> CaseChange:
    credential = CredentialChange(CredentialMove.expire, reason="expired")
    return CaseChange(before=state, after=state, events=credential_events(credential, WORKER), credential=credential)


def case_opened(
    *, mailbox: str, ticket_ref: str | None, actions: dict[str, Any], plan: list[str], actor: str
) -> TimelineEvent:
    """The first event of every case."""
    detail = {"mailbox": mailbox, "ticket_ref": ticket_ref, "actions": actions, "plan": plan}
    return TimelineEvent(EventType.case_created, actor, to_state=CaseState.received, detail=detail)


def webhooks_of(change: CaseChange, *, at: str) -> tuple[tuple[WebhookEventType, dict[str, Any]], ...]:
    """Which webhook events a written change sends, with what they add to the case document.

    case.state_changed carries the timeline's state-change detail unchanged (``change``), and a
    terminal state adds case.resolved, case.failed or case.escalated.
    """
    out: list[tuple[WebhookEventType, dict[str, Any]]] = []
    for event in change.events:
        if event.type is EventType.state_changed and event.to_state is not None:
            out.append((WebhookEventType.case_state_changed, {"change": dict(event.detail)}))
            if (terminal := TERMINAL_WEBHOOK.get(event.to_state)) is not None:
                out.append((terminal, {}))
        elif event.type is EventType.credential_revealed:
            out.append((WebhookEventType.credential_revealed, {"revealed_by": event.actor, "revealed_at": at}))
    return tuple(out)


def tenant_assigned(tenant: str) -> TimelineEvent:
    """A worker decided the tenant of a case that intake could not place (its domains were not known)."""
    return TimelineEvent(EventType.tenant_assigned, WORKER, detail={"tenant": tenant})
