"""The events a change produces: pure, so every transition of the table is checked here without a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from service.domain import decide as rules
from service.domain.audit import Actor
from service.domain.credential import CredentialView, reveal
from service.domain.decide import Decision, StepChange
from service.domain.states import TERMINAL_STATES, CaseOutcome, CaseState, StepName, StepStatus
from service.domain.timeline import (
    TERMINAL_WEBHOOK,
    WORKER,
    CredentialMove,
    EventType,
    UserAction,
    WebhookEventType,
    events_of,
    finished_late,
    person_decided,
    step_decided,
    step_started,
    webhooks_of,
)
from service.domain.transitions import TRANSITIONS, Action
from service.errors import CredentialGone, CredentialNotFound, CredentialNotReady

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
ALICE = Actor("api_key", "k1", "alice")
EDGES = [(action, before, after) for action, table in TRANSITIONS.items() for before, after in table.items()]


def _decision(action: Action, after: CaseState, *steps: StepChange, summary: str = "why") -> Decision:
    outcome = {
        CaseState.resolved: CaseOutcome.unblocked,
        CaseState.failed: CaseOutcome.failed,
        CaseState.escalated: CaseOutcome.escalated,
        CaseState.cancelled: CaseOutcome.cancelled,
    }.get(after)
    return Decision(state=after, action=action, steps=steps, next_action_at=None, outcome=outcome, summary=summary)


@pytest.mark.parametrize(("action", "before", "after"), EDGES, ids=[f"{a}:{b}->{c}" for a, b, c in EDGES])
def test_every_transition_ends_with_one_state_change_of_one_shape(
    action: Action, before: CaseState, after: CaseState
) -> None:
    step = StepChange(StepName.check_restriction, StepStatus.succeeded)
    events = events_of(_decision(action, after, step, summary=f"{action.value} taken"), before=before, actor=WORKER)
    assert [e.type for e in events] == [EventType.step_succeeded, EventType.state_changed]
    change = events[-1]
    assert (change.from_state, change.to_state, change.actor) == (before, after, WORKER)
    assert change.detail == {"from": before.value, "to": after.value, "reason": f"{action.value} taken"}
    # The webhooks say the same, with the same detail; a terminal state adds its own event.
    sent = webhooks_of(
        person_decided(_decision(action, after), before=before, action=UserAction.cancel, actor=ALICE, mailbox="m"),
        at="t",
    )
    kinds = [kind for kind, _ in sent]
    assert kinds[0] is WebhookEventType.case_state_changed
    assert sent[0][1] == {"change": {"from": before.value, "to": after.value, "reason": "why"}}
    assert kinds[1:] == ([TERMINAL_WEBHOOK[after]] if after in TERMINAL_WEBHOOK else [])


@pytest.mark.parametrize(("action", "before", "after"), EDGES, ids=[f"{a}:{b}->{c}" for a, b, c in EDGES])
def test_a_person_moving_a_case_is_their_event_then_the_change(
    action: Action, before: CaseState, after: CaseState
) -> None:
    change = person_decided(_decision(action, after), before=before, action=UserAction.retry, actor=ALICE, mailbox="m")
    assert [e.type for e in change.events] == [EventType.case_retried, EventType.state_changed]
    assert all(e.actor == "alice" for e in change.events)
    assert change.audit is not None
    assert change.audit.actor == ALICE
    assert change.audit.detail == {"from_state": before.value, "to_state": after.value, "mailbox": "m"}
    # Reopening a finished case clears whatever lease was left on it; nothing else touches the lease.
    assert (change.lease is not None and change.lease.until is None) == (before in TERMINAL_STATES)


def test_no_state_change_no_state_event() -> None:
    stay = Decision(
        state=CaseState.securing_account,
        action=None,
        steps=(StepChange(StepName.reset_password, StepStatus.succeeded),),
        next_action_at=NOW,
    )
    events = events_of(stay, before=CaseState.securing_account, actor=WORKER)
    assert [e.type for e in events] == [EventType.step_succeeded]
    assert (
        webhooks_of(
            step_decided(
                stay,
                before=CaseState.securing_account,
                step=StepName.reset_password,
                step_detail=None,
                now=NOW,
                credential_ttl=60,
                keep_lease_until=None,
            ),
            at="t",
        )
        == ()
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (StepChange(StepName.unblock, StepStatus.succeeded), EventType.step_succeeded),
        (StepChange(StepName.unblock, StepStatus.failed, {"code": "x"}), EventType.step_failed),
        (StepChange(StepName.unblock, StepStatus.skipped), EventType.step_skipped),
        (StepChange(StepName.unblock, StepStatus.pending, {"code": "x"}), EventType.step_retry_scheduled),
        (StepChange(StepName.unblock, StepStatus.pending, None, reset_counters=True), EventType.step_pending),
        (StepChange(StepName.propagation, StepStatus.running), EventType.step_waiting),
        (StepChange(StepName.propagation, StepStatus.running, {"code": "x"}), EventType.step_retry_scheduled),
    ],
)
def test_which_event_a_step_change_is(change: StepChange, expected: EventType) -> None:
    decision = Decision(state=CaseState.unblocking, action=None, steps=(change,), next_action_at=NOW)
    (event,) = events_of(decision, before=CaseState.unblocking, actor=WORKER)
    assert event.type is expected
    assert event.step is change.name
    if change.error:
        assert event.detail["error"] == change.error
    if expected in (EventType.step_retry_scheduled, EventType.step_waiting):
        assert event.detail["next_action_at"] == NOW.isoformat()


def test_the_step_that_ran_carries_its_detail() -> None:
    decision = rules.cancel(
        rules.CaseView(CaseState.received, (rules.StepView(StepName.reset_password, StepStatus.pending),))
    )
    events = events_of(
        decision, before=CaseState.received, actor=WORKER, step=StepName.reset_password, step_detail={"k": 1}
    )
    assert events[0].detail == {"k": 1}


def test_starting_a_step_that_moves_the_case() -> None:
    change = step_started(
        before=CaseState.received,
        after=CaseState.securing_account,
        step=StepName.reset_password,
        attempt=1,
        first_start=True,
        reason="starting reset_password",
        lease_until=NOW,
    )
    assert [e.type for e in change.events] == [EventType.state_changed, EventType.step_started]
    assert change.events[0].detail == {
        "from": "received",
        "to": "securing_account",
        "reason": "starting reset_password",
    }
    assert change.events[1].detail == {"attempt": 1}
    same = step_started(
        before=CaseState.unblocking,
        after=CaseState.unblocking,
        step=StepName.unblock,
        attempt=2,
        first_start=False,
        reason="",
        lease_until=NOW,
    )
    assert [e.type for e in same.events] == [EventType.step_started]


def test_a_reset_makes_the_password_available_for_the_configured_time() -> None:
    decision = Decision(
        state=CaseState.securing_account,
        action=None,
        steps=(StepChange(StepName.reset_password, StepStatus.succeeded),),
        next_action_at=NOW,
    )
    change = step_decided(
        decision,
        before=CaseState.securing_account,
        step=StepName.reset_password,
        step_detail=None,
        now=NOW,
        credential_ttl=600,
        keep_lease_until=NOW,
    )
    assert change.credential is not None
    assert change.credential.move is CredentialMove.apply
    assert change.credential.expires_at == NOW + timedelta(seconds=600)
    assert change.events[-1].type is EventType.credential_available
    assert change.events[-1].detail == {"expires_at": (NOW + timedelta(seconds=600)).isoformat()}


def test_a_late_reset_also_uses_the_configured_time_and_says_so() -> None:
    change = finished_late(
        state=CaseState.cancelled,
        step=StepName.reset_password,
        status=StepStatus.succeeded,
        error=None,
        now=NOW,
        ttl=900,
    )
    assert change.after is change.before is CaseState.cancelled
    assert [e.type for e in change.events] == [EventType.step_finished_late, EventType.credential_available]
    assert change.credential is not None
    assert change.credential.expires_at == NOW + timedelta(seconds=900)
    failed = finished_late(
        state=CaseState.cancelled,
        step=StepName.unblock,
        status=StepStatus.failed,
        error={"code": "x"},
        now=NOW,
        ttl=900,
    )
    assert failed.credential is None
    assert [e.type for e in failed.events] == [EventType.step_finished_late]


def _credential(**fields: object) -> CredentialView:
    values: dict[str, object] = {
        "applied": True,
        "expires_at": NOW + timedelta(hours=1),
        "revealed_at": None,
        "revealed_by": None,
        "destroyed_at": None,
        "destroyed_reason": None,
    }
    values.update(fields)
    return CredentialView(**values)  # type: ignore[arg-type]


def test_reveal_rules() -> None:
    args = {"state": CaseState.unblocking, "reset_asked": True, "actor": ALICE, "now": NOW}
    revealed = reveal(credential=_credential(), **args)  # type: ignore[arg-type]
    assert revealed.credential is not None
    assert revealed.credential.move is CredentialMove.reveal
    assert [e.type for e in revealed.events] == [EventType.credential_revealed]
    assert webhooks_of(revealed, at="t") == (
        (WebhookEventType.credential_revealed, {"revealed_by": "alice", "revealed_at": "t"}),
    )
    expired = reveal(credential=_credential(expires_at=NOW), **args)  # type: ignore[arg-type]
    assert expired.credential is not None
    assert expired.credential.move is CredentialMove.expire
    with pytest.raises(CredentialNotReady):
        reveal(credential=None, **args)  # type: ignore[arg-type]
    with pytest.raises(CredentialNotFound):
        reveal(credential=None, **{**args, "state": CaseState.resolved})  # type: ignore[arg-type]
    with pytest.raises(CredentialGone, match="already revealed"):
        reveal(credential=_credential(revealed_at=NOW), **args)  # type: ignore[arg-type]
    with pytest.raises(CredentialGone, match="unrevealed"):
        reveal(credential=_credential(destroyed_at=NOW), **args)  # type: ignore[arg-type]


def test_every_event_type_is_spelled_once() -> None:
    assert len({t.value for t in EventType}) == len(EventType)
    assert all(t.value.count(".") == 1 for t in EventType)
