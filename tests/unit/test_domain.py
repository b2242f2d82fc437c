"""The pure core: transition table, plan, retry policy, reason parsing, passwords and decisions."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.domain import decide as d
from service.domain.findings import Containment
from service.domain.password import generate_password, meets_entra_complexity
from service.domain.plan import Actions, RequestedActions, build_plan, resume_step_after
from service.domain.retry import RetryPolicy, backoff_seconds, next_attempt_at
from service.domain.states import OPEN_STATES, TERMINAL_STATES, CaseOutcome, CaseState, StepName, StepStatus
from service.domain.tenant import Restriction, parse_reason
from service.domain.transitions import TRANSITIONS, Action, all_edges, allowed_from, apply
from service.errors import InvalidTransition

NOW = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
POLICY = RetryPolicy(initial_interval=2, maximum_interval=60, maximum_attempts=3, jitter=0)
TIMING = d.Timing(propagation_wait=4 * 3600, recheck_interval=900)
ROB = Restriction("rob@contoso.com", "EmailSendingLimitExceeded;ExceedingLimitType=External", NOW, NOW, False)


def case(state: CaseState = CaseState.received, *, approval: bool = False, **statuses: str) -> d.CaseView:
    plan = build_plan(RequestedActions().resolve(Containment.off))
    steps = tuple(d.StepView(s, StepStatus(statuses.get(s.value, "pending"))) for s in plan)
    return d.CaseView(state=state, steps=steps, require_approval=approval)


# --- the table ----------------------------------------------------------------------------------------


def test_every_state_is_reachable_and_terminal_states_are_final() -> None:
    """The table reaches every state from received; nothing leaves resolved or cancelled."""
    edges = all_edges()
    reached = {CaseState.received}
    frontier = [CaseState.received]
    while frontier:
        state = frontier.pop()
        for src, dst in edges:
            if src is state and dst not in reached:
                reached.add(dst)
                frontier.append(dst)
    assert reached == set(CaseState)
    assert not [e for e in edges if e[0] in (CaseState.resolved, CaseState.cancelled)]
    assert {src for src, dst in edges if src in (CaseState.failed, CaseState.escalated)} == {
        CaseState.failed,
        CaseState.escalated,
    }  # only retries leave them


@pytest.mark.parametrize(("action", "table"), list(TRANSITIONS.items()))
def test_undeclared_transitions_raise_naming_action_state_and_allowed(action: Action, table: dict) -> None:  # type: ignore[type-arg]
    """Every action from every state it does not declare raises InvalidTransition with the details."""
    for state in CaseState:
        if state in table:
            assert apply(action, state) is table[state]
        else:
            with pytest.raises(InvalidTransition) as caught:
                apply(action, state)
            assert caught.value.action == action.value
            assert caught.value.current == state.value
            assert set(caught.value.allowed) == {s.value for s in allowed_from(action)}


def test_cancel_is_allowed_only_before_the_unblock_starts() -> None:
    """Contract: cancel before `unblocking` starts, else 409."""
    assert allowed_from(Action.cancel) == {
        CaseState.received,
        CaseState.securing_account,
        CaseState.investigating,
        CaseState.containing,
        CaseState.checking_restriction,
        CaseState.awaiting_approval,
    }


# --- plan, retry, reason, password ---------------------------------------------------------------------


def test_the_plan_follows_the_requested_actions() -> None:
    """Secure, investigate, contain as asked and as the policy says, in Microsoft's order, then the unblock."""
    unblock = (StepName.check_restriction, StepName.unblock, StepName.verify, StepName.propagation)
    assert build_plan(RequestedActions().resolve(Containment.enforce)) == (
        StepName.reset_password,
        StepName.revoke_sessions,
        StepName.investigate,
        StepName.disable_inbox_rules,
        StepName.remove_forwarding,
        *unblock,
    )
    assert build_plan(RequestedActions().resolve(Containment.report)) == (
        StepName.reset_password,
        StepName.revoke_sessions,
        StepName.investigate,
        *unblock,
    )
    assert build_plan(RequestedActions().resolve(Containment.off)) == (
        StepName.reset_password,
        StepName.revoke_sessions,
        *unblock,
    )
    # An explicit false skips containment even under enforce; an explicit true does it under report or off.
    assert StepName.disable_inbox_rules not in build_plan(
        RequestedActions(disable_suspicious_inbox_rules=False).resolve(Containment.enforce)
    )
    assert StepName.remove_forwarding in build_plan(
        RequestedActions(remove_forwarding=True).resolve(Containment.report)
    )
    assert StepName.disable_inbox_rules in build_plan(
        RequestedActions(disable_suspicious_inbox_rules=True).resolve(Containment.off)
    )
    assert build_plan(RequestedActions(False, False).resolve(Containment.off))[0] is StepName.check_restriction
    assert resume_step_after(StepName.propagation) is StepName.check_restriction


def test_retry_policy_backs_off_exponentially_with_bounded_jitter() -> None:
    """2, 4, 8 ... capped; jitter spreads by at most its fraction; Retry-After wins when longer."""
    policy = RetryPolicy(initial_interval=2, coefficient=2, maximum_interval=10, maximum_attempts=5, jitter=0.2)
    assert [backoff_seconds(policy, n) for n in (1, 2, 3, 4)] == [2, 4, 8, 10]
    assert backoff_seconds(policy, 1, spread=0) == pytest.approx(1.6)
    assert backoff_seconds(policy, 1, spread=0.999) == pytest.approx(2.4, abs=0.01)
    assert next_attempt_at(policy, 1, NOW, retry_after=30) == NOW + timedelta(seconds=30)
    assert policy.retries_left(4, "throttled")
    assert not policy.retries_left(5, "throttled")
    assert policy.retries_left(5, "endpoint_unavailable", attempts=5)  # an outage uses its own budget
    assert not policy.retries_left(0, "endpoint_unavailable", attempts=288)
    with pytest.raises(ValueError, match="coefficient"):
        RetryPolicy(coefficient=0.5)


def test_reason_strings_are_parsed_and_kept() -> None:
    """The Reason string becomes the contract's fields; the raw string is kept."""
    fields = parse_reason(
        "EmailSendingLimitExceeded;InternalRecipientCountToday=12;ExternalRecipientCountToday=480;"
        "ExceedingLimitType=External"
    )
    assert (fields.kind, fields.limit_type) == ("EmailSendingLimitExceeded", "External")
    assert (fields.internal_recipients_today, fields.external_recipients_today) == (12, 480)
    odd = parse_reason("Something;InternalRecipientCountToday=lots;;Extra=1")
    assert odd.internal_recipients_today is None
    assert odd.raw.startswith("Something")
    assert parse_reason(None).raw == ""


@settings(max_examples=200)
@given(st.integers(min_value=0, max_value=2**32))
def test_generated_passwords_meet_entra_complexity(seed: int) -> None:
    """Every generated password has all four classes, 20 characters, no look-alikes."""
    rng = random.Random(seed)
    password = generate_password(randbelow=rng.randrange)
    assert len(password) == 20
    assert meets_entra_complexity(password)
    assert not set(password) & set("0O1lI ")


# --- decisions -----------------------------------------------------------------------------------------


def test_the_happy_path_to_unblocked() -> None:
    """received → securing → checking → unblocking → verifying → awaiting_propagation → resolved."""
    c = case()
    assert d.next_step(c) is StepName.reset_password
    assert d.begin(c, StepName.reset_password) is Action.secure
    c = d.CaseView(CaseState.securing_account, c.steps)
    first = d.decide(c, StepName.reset_password, d.Succeeded(), NOW, policy=POLICY, timing=TIMING)
    assert first.state is CaseState.securing_account
    assert first.next_action_at == NOW
    c = c.with_step(d.StepView(StepName.reset_password, StepStatus.succeeded))
    second = d.decide(c, StepName.revoke_sessions, d.Succeeded(), NOW, policy=POLICY, timing=TIMING)
    assert second.state is CaseState.checking_restriction
    c = d.CaseView(CaseState.checking_restriction, c.steps)
    checked = d.decide(c, StepName.check_restriction, d.Succeeded(ROB), NOW, policy=POLICY, timing=TIMING)
    assert checked.state is CaseState.unblocking
    assert checked.restriction is not None
    assert checked.restriction["limit_type"] == "External"
    c = d.CaseView(CaseState.unblocking, c.steps)
    assert d.decide(c, StepName.unblock, d.Succeeded(), NOW, policy=POLICY, timing=TIMING).state is CaseState.verifying
    c = d.CaseView(CaseState.verifying, c.steps)
    verified = d.decide(c, StepName.verify, d.Succeeded(None), NOW, policy=POLICY, timing=TIMING)
    assert verified.state is CaseState.awaiting_propagation
    assert verified.sending_restored_by == NOW + timedelta(hours=4)
    assert verified.next_action_at == NOW + timedelta(minutes=15)
    c = d.CaseView(CaseState.awaiting_propagation, c.steps, sending_restored_by=verified.sending_restored_by)
    waiting = d.decide(
        c, StepName.propagation, d.Succeeded(None), NOW + timedelta(hours=1), policy=POLICY, timing=TIMING
    )
    assert waiting.state is CaseState.awaiting_propagation
    later = NOW + timedelta(hours=4, seconds=1)
    done = d.decide(c, StepName.propagation, d.Succeeded(None), later, policy=POLICY, timing=TIMING)
    assert (done.state, done.outcome) == (CaseState.resolved, CaseOutcome.unblocked)


def test_not_restricted_resolves_and_skips_the_unblock() -> None:
    """A sender not on the list: resolved as not_restricted, unblock steps skipped."""
    c = case(CaseState.checking_restriction)
    decision = d.decide(c, StepName.check_restriction, d.Succeeded(None), NOW, policy=POLICY, timing=TIMING)
    assert (decision.state, decision.outcome) == (CaseState.resolved, CaseOutcome.not_restricted)
    skipped = {s.name for s in decision.steps if s.status is StepStatus.skipped}
    assert skipped == {StepName.unblock, StepName.verify, StepName.propagation}


def test_approval_holds_the_case() -> None:
    """With approval required, a restricted sender waits for a person; approve moves on."""
    c = case(CaseState.checking_restriction, approval=True)
    decision = d.decide(c, StepName.check_restriction, d.Succeeded(ROB), NOW, policy=POLICY, timing=TIMING)
    assert decision.state is CaseState.awaiting_approval
    assert decision.next_action_at is None
    waiting = d.CaseView(CaseState.awaiting_approval, c.steps, require_approval=True)
    assert d.next_step(waiting) is None
    assert d.approve(waiting, NOW).state is CaseState.unblocking


def test_transient_failures_retry_then_fail() -> None:
    """Retryable errors back off until the attempts are spent; then failed with the last error."""
    c = case(CaseState.unblocking)
    flaky = d.Failed("call_timeout", "hung", retryable=True)
    first = d.decide(c, StepName.unblock, flaky, NOW, policy=POLICY, timing=TIMING)
    assert first.state is CaseState.unblocking
    assert first.next_action_at == NOW + timedelta(seconds=2)
    assert first.last_error == {"code": "call_timeout", "message": "hung", "retryable": True}
    spent = c.with_step(d.StepView(StepName.unblock, StepStatus.running, attempts=3, failures=2))
    last = d.decide(spent, StepName.unblock, flaky, NOW, policy=POLICY, timing=TIMING)
    assert (last.state, last.outcome) == (CaseState.failed, CaseOutcome.failed)
    assert last.last_error is not None
    assert "gave up after 3 attempts" in last.last_error["message"]


@pytest.mark.parametrize("code", ["unblock_limit_exceeded", "permission_denied", "synced_user"])
def test_what_a_person_must_handle_escalates_with_guidance(code: str) -> None:
    """Limit reached, permission missing, synced account: escalated with what to do."""
    c = case(CaseState.unblocking)
    decision = d.decide(c, StepName.unblock, d.Failed(code, "no", retryable=False), NOW, policy=POLICY, timing=TIMING)
    assert (decision.state, decision.outcome) == (CaseState.escalated, CaseOutcome.escalated)
    assert decision.last_error is not None
    assert d.GUIDANCE[code] in decision.last_error["message"]


def test_unknown_mailbox_fails() -> None:
    """mailbox_not_found is a failure, not an escalation."""
    c = case(CaseState.securing_account)
    decision = d.decide(
        c, StepName.reset_password, d.Failed("mailbox_not_found", "x", False), NOW, policy=POLICY, timing=TIMING
    )
    assert decision.state is CaseState.failed
    assert decision.last_error is not None
    assert decision.last_error["code"] == "mailbox_not_found"


def test_a_reblock_while_waiting_escalates() -> None:
    """Back on the list during the wait: escalated as reblocked."""
    c = d.CaseView(CaseState.awaiting_propagation, case().steps, sending_restored_by=NOW + timedelta(hours=4))
    decision = d.decide(c, StepName.propagation, d.Succeeded(ROB), NOW, policy=POLICY, timing=TIMING)
    assert (decision.state, decision.outcome) == (CaseState.escalated, CaseOutcome.escalated)
    assert decision.last_error is not None
    assert decision.last_error["code"] == "reblocked"


def test_still_listed_after_remove_retries_then_escalates() -> None:
    """Verify sees the sender still listed: retry (eventual consistency), then escalate."""
    c = case(CaseState.verifying)
    first = d.decide(c, StepName.verify, d.Succeeded(ROB), NOW, policy=POLICY, timing=TIMING)
    assert first.state is CaseState.verifying
    spent = c.with_step(d.StepView(StepName.verify, StepStatus.running, attempts=3, failures=2))
    assert d.decide(spent, StepName.verify, d.Succeeded(ROB), NOW, policy=POLICY, timing=TIMING).state is (
        CaseState.escalated
    )


def test_no_wait_resolves_right_after_verify() -> None:
    """With a propagation wait of zero the case resolves as soon as the unblock is verified."""
    c = case(CaseState.verifying)
    decision = d.decide(c, StepName.verify, d.Succeeded(None), NOW, policy=POLICY, timing=d.Timing(0, 900))
    assert (decision.state, decision.outcome) == (CaseState.resolved, CaseOutcome.unblocked)


def test_retry_resumes_at_the_failed_step() -> None:
    """A retry re-opens the case at the step that failed; a re-block restarts at the lookup."""
    failed = case(CaseState.failed, reset_password="succeeded", revoke_sessions="succeeded", check_restriction="failed")
    decision = d.retry(failed, NOW)
    assert decision.state is CaseState.checking_restriction
    assert {c.name for c in decision.steps} == {
        StepName.check_restriction,
        StepName.unblock,
        StepName.verify,
        StepName.propagation,
    }
    assert all(c.reset_counters for c in decision.steps)
    reblocked = case(CaseState.escalated, propagation="failed")
    assert d.retry(reblocked, NOW).state is CaseState.checking_restriction
    with pytest.raises(InvalidTransition):
        d.retry(case(CaseState.resolved), NOW)


def test_cancel_skips_what_has_not_run() -> None:
    """Cancel ends the case and marks pending steps skipped."""
    decision = d.cancel(case(CaseState.securing_account, reset_password="succeeded"))
    assert (decision.state, decision.outcome) == (CaseState.cancelled, CaseOutcome.cancelled)
    assert StepName.reset_password not in {c.name for c in decision.steps}
    with pytest.raises(InvalidTransition):
        d.cancel(case(CaseState.unblocking))


def test_an_unblock_with_unknown_outcome_is_checked_first() -> None:
    """Only a repeated unblock attempt looks at the list before removing."""
    assert not d.needs_precheck(d.StepView(StepName.unblock, StepStatus.running, attempts=1))
    assert d.needs_precheck(d.StepView(StepName.unblock, StepStatus.running, attempts=2))


# --- property: random results never reach an undeclared transition --------------------------------------

RESULTS = st.one_of(
    st.builds(lambda: d.Succeeded(None)),
    st.builds(lambda: d.Succeeded(ROB)),
    st.sampled_from(
        [
            d.Failed("endpoint_unavailable", "x", True),
            d.Failed("throttled", "x", True, 30),
            d.Failed("mailbox_not_found", "x", False),
            d.Failed("unblock_limit_exceeded", "x", False),
            d.Failed("permission_denied", "x", False),
            d.Failed("remote_error", "x", False),
        ]
    ),
)
USER_ACTIONS = st.sampled_from(["approve", "cancel", "retry", None])


@settings(max_examples=300, deadline=None)
@given(
    actions=st.builds(Actions, st.booleans(), st.booleans(), st.booleans(), st.booleans(), st.booleans()),
    approval=st.booleans(),
    script=st.lists(st.tuples(RESULTS, USER_ACTIONS, st.integers(0, 10_000)), min_size=1, max_size=60),
)
def test_random_runs_only_take_declared_transitions(
    actions: Actions, approval: bool, script: list[tuple[d.StepResult, str | None, int]]
) -> None:
    """Drive the engine's loop with random results and person actions: every move is in the table."""
    steps = tuple(d.StepView(s, StepStatus.pending) for s in build_plan(actions))
    c = d.CaseView(CaseState.received, steps, require_approval=approval)
    now = NOW
    edges = all_edges()
    for result, person, minutes in script:
        now += timedelta(minutes=minutes % 600)
        decision: d.Decision | None = None
        if person is not None:
            try:
                decision = {"approve": d.approve, "cancel": lambda v, _: d.cancel(v), "retry": d.retry}[person](c, now)
            except InvalidTransition:
                decision = None
        elif (step := d.next_step(c)) is not None:
            action = d.begin(c, step)
            if action is not None:
                c = d.CaseView(apply(action, c.state), c.steps, c.require_approval, c.sending_restored_by)
            view = c.step(step)
            c = c.with_step(d.StepView(step, StepStatus.running, view.attempts + 1, view.failures))
            decision = d.decide(c, step, result, now, policy=POLICY, timing=TIMING)
        if decision is None:
            continue
        if decision.action is not None:
            assert (c.state, decision.state) in edges
        assert (decision.state in TERMINAL_STATES) == (decision.outcome is not None)
        due = d.due_after(c, decision, now)  # what the worker sends ahead of the write, known before it
        steps_now = {s.name: s for s in c.steps}
        for change in decision.steps:
            old = steps_now[change.name]
            failures = 0 if change.reset_counters or change.status is StepStatus.succeeded else old.failures
            if change.failures is not None:
                failures = change.failures
            attempts = 0 if change.reset_counters else old.attempts
            steps_now[change.name] = d.StepView(change.name, change.status, attempts, failures)
        restored = decision.sending_restored_by or c.sending_restored_by
        c = d.CaseView(decision.state, tuple(steps_now[s.name] for s in c.steps), c.require_approval, restored)
        assert c.state in OPEN_STATES | TERMINAL_STATES
        soon = decision.next_action_at is not None and decision.next_action_at <= now
        assert due is (d.next_step(c) if soon else None)


@pytest.mark.parametrize("state", sorted(OPEN_STATES | {CaseState.resolved, CaseState.cancelled}))
def test_retry_outside_failed_or_escalated_is_an_invalid_transition(state: CaseState) -> None:
    """Found by the property test: retry on a live case must be a 409, never an internal error."""
    c = d.CaseView(state, case().steps)
    with pytest.raises(InvalidTransition) as caught:
        d.retry(c, NOW)
    assert set(caught.value.allowed) == {"failed", "escalated"}


def test_outages_do_not_use_up_attempts() -> None:
    """Endpoint-unavailable failures keep the attempt budget for real failures (found by the hang test)."""
    c = case(CaseState.securing_account)
    outage = d.Failed("endpoint_unavailable", "circuit open", retryable=True)
    timeout = d.Failed("call_timeout", "hung", retryable=True)
    long_outage = c.with_step(d.StepView(StepName.reset_password, StepStatus.running, attempts=50, failures=2))
    decision = d.decide(long_outage, StepName.reset_password, outage, NOW, policy=POLICY, timing=TIMING)
    assert decision.state is CaseState.securing_account
    assert decision.steps[0].failures == 2
    after = c.with_step(d.StepView(StepName.reset_password, StepStatus.running, attempts=51, failures=2))
    third = d.decide(after, StepName.reset_password, timeout, NOW, policy=POLICY, timing=TIMING)
    assert third.state is CaseState.failed  # the third real failure (POLICY allows three)
