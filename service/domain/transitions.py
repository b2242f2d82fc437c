"""The one table of allowed transitions.

Every change of a case's state is named by an :class:`Action` and looked up here; an action
that the table does not declare for the current state raises
:class:`~service.errors.InvalidTransition` naming the action, the state and the states the
action is allowed from. The worker's decisions and the API's approve/cancel/retry go through
the same table, so a state the diagram does not show cannot be reached by any path.
"""

from __future__ import annotations

from enum import StrEnum

from service.domain.states import CaseState as S
from service.errors import InvalidTransition


class Action(StrEnum):
    secure = "secure"  # the worker starts the account-securing steps
    investigate = "investigate"  # look at what the attacker may have left in the mailbox
    contain = "contain"  # disable suspicious inbox rules, clear external forwarding
    check = "check"  # securing and containment done (or none asked): look the sender up
    await_approval = "await_approval"  # restricted, and a person must approve the unblock
    approve = "approve"  # a person approved
    unblock = "unblock"  # restricted: remove it from the list
    verify = "verify"  # removed: confirm it is gone
    wait = "wait"  # gone: wait for sending to come back, re-checking
    resolve = "resolve"  # done: not restricted, or unblocked and waited
    fail = "fail"  # a step failed for good
    escalate = "escalate"  # a person must act (limit reached, re-blocked, permission)
    cancel = "cancel"  # a person cancelled before the unblock started
    retry_securing = "retry_securing"  # retry of a failed or escalated case, resuming here ...
    retry_investigate = "retry_investigate"
    retry_contain = "retry_contain"
    retry_check = "retry_check"
    retry_unblock = "retry_unblock"
    retry_verify = "retry_verify"


_PREPARING = (S.received, S.securing_account, S.investigating, S.containing)
_WORKING = (*_PREPARING, S.checking_restriction, S.unblocking, S.verifying)

#: action -> {from state: to state}
TRANSITIONS: dict[Action, dict[S, S]] = {
    Action.secure: {S.received: S.securing_account},
    Action.investigate: {S.received: S.investigating, S.securing_account: S.investigating},
    Action.contain: {S.received: S.containing, S.securing_account: S.containing, S.investigating: S.containing},
    Action.check: dict.fromkeys(_PREPARING, S.checking_restriction),
    Action.await_approval: {S.checking_restriction: S.awaiting_approval},
    Action.approve: {S.awaiting_approval: S.unblocking},
    Action.unblock: {S.checking_restriction: S.unblocking},
    Action.verify: {S.unblocking: S.verifying},
    Action.wait: {S.verifying: S.awaiting_propagation},
    Action.resolve: {
        S.checking_restriction: S.resolved,
        S.verifying: S.resolved,
        S.awaiting_propagation: S.resolved,
    },
    Action.fail: dict.fromkeys((*_WORKING, S.awaiting_propagation), S.failed),
    Action.escalate: dict.fromkeys((*_WORKING, S.awaiting_propagation), S.escalated),
    Action.cancel: dict.fromkeys((*_PREPARING, S.checking_restriction, S.awaiting_approval), S.cancelled),
    Action.retry_securing: {S.failed: S.securing_account, S.escalated: S.securing_account},
    Action.retry_investigate: {S.failed: S.investigating, S.escalated: S.investigating},
    Action.retry_contain: {S.failed: S.containing, S.escalated: S.containing},
    Action.retry_check: {S.failed: S.checking_restriction, S.escalated: S.checking_restriction},
    Action.retry_unblock: {S.failed: S.unblocking, S.escalated: S.unblocking},
    Action.retry_verify: {S.failed: S.verifying, S.escalated: S.verifying},
}


def allowed_from(action: Action) -> frozenset[S]:
    return frozenset(TRANSITIONS[action])


def apply(action: Action, current: S | str) -> S:
    """The state after ``action`` from ``current``, or InvalidTransition."""
    table = TRANSITIONS[action]
    try:
        return table[S(current)]
    except (KeyError, ValueError):
        raise InvalidTransition(action.value, str(current), [s.value for s in table]) from None


def can(action: Action, current: S | str) -> bool:
    return S(current) in TRANSITIONS[action]


def all_edges() -> set[tuple[S, S]]:
    """Every (from, to) pair the table allows, for diagrams and property tests."""
    return {(src, dst) for table in TRANSITIONS.values() for src, dst in table.items()}
