"""Names of case states, outcomes, steps and step statuses (contract section 4)."""

from __future__ import annotations

from enum import StrEnum


class CaseState(StrEnum):
    received = "received"
    securing_account = "securing_account"
    investigating = "investigating"
    containing = "containing"
    checking_restriction = "checking_restriction"
    awaiting_approval = "awaiting_approval"
    unblocking = "unblocking"
    verifying = "verifying"
    awaiting_propagation = "awaiting_propagation"
    resolved = "resolved"
    failed = "failed"
    escalated = "escalated"
    cancelled = "cancelled"


class CaseOutcome(StrEnum):
    """How a finished case ended (its `outcome` field)."""

    unblocked = "unblocked"
    not_restricted = "not_restricted"
    failed = "failed"
    escalated = "escalated"
    cancelled = "cancelled"


class StepName(StrEnum):
    reset_password = "reset_password"  # noqa: S105 - a step name, not a password
    revoke_sessions = "revoke_sessions"
    investigate = "investigate"
    disable_inbox_rules = "disable_inbox_rules"
    remove_forwarding = "remove_forwarding"
    check_restriction = "check_restriction"
    unblock = "unblock"
    verify = "verify"
    propagation = "propagation"


class StepStatus(StrEnum):
    pending = "pending"
    running = "running"
    succeeded = "succeeded"
    skipped = "skipped"
    failed = "failed"


TERMINAL_STATES: frozenset[CaseState] = frozenset(
    {CaseState.resolved, CaseState.failed, CaseState.escalated, CaseState.cancelled}
)
OPEN_STATES: frozenset[CaseState] = frozenset(CaseState) - TERMINAL_STATES

#: Which state a case is in while each step runs.
STEP_STATE: dict[StepName, CaseState] = {
    StepName.reset_password: CaseState.securing_account,
    StepName.revoke_sessions: CaseState.securing_account,
    StepName.investigate: CaseState.investigating,
    StepName.disable_inbox_rules: CaseState.containing,
    StepName.remove_forwarding: CaseState.containing,
    StepName.check_restriction: CaseState.checking_restriction,
    StepName.unblock: CaseState.unblocking,
    StepName.verify: CaseState.verifying,
    StepName.propagation: CaseState.awaiting_propagation,
}

#: The steps before the restricted list is looked at: secure the account, investigate, contain.
PREPARING_STEPS: tuple[StepName, ...] = (
    StepName.reset_password,
    StepName.revoke_sessions,
    StepName.investigate,
    StepName.disable_inbox_rules,
    StepName.remove_forwarding,
)

DONE_STATUSES: frozenset[StepStatus] = frozenset({StepStatus.succeeded, StepStatus.skipped})
