"""The step plan: which steps a case runs, in order, given what the requester asked for."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from service.domain.states import STEP_STATE, CaseState, StepName


@dataclass(frozen=True, slots=True)
class RequestedActions:
    """The ``actions`` object of a case; defaults follow Microsoft's procedure (contract section 4)."""

    reset_password: bool = True
    revoke_sessions: bool = True
    disable_suspicious_inbox_rules: bool = False
    remove_forwarding: bool = False

    def as_dict(self) -> dict[str, bool]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> RequestedActions:
        data = data or {}
        return cls(**{k: bool(v) for k, v in data.items() if k in cls.__dataclass_fields__})


_SECURING_BY_ACTION: tuple[tuple[str, StepName], ...] = (
    ("reset_password", StepName.reset_password),
    ("revoke_sessions", StepName.revoke_sessions),
    ("disable_suspicious_inbox_rules", StepName.disable_inbox_rules),
    ("remove_forwarding", StepName.remove_forwarding),
)

_ALWAYS: tuple[StepName, ...] = (
    StepName.check_restriction,
    StepName.unblock,
    StepName.verify,
    StepName.propagation,
)


def build_plan(actions: RequestedActions) -> tuple[StepName, ...]:
    """Securing steps first (Microsoft: reset the password at once), then the unblock itself."""
    securing = tuple(step for flag, step in _SECURING_BY_ACTION if getattr(actions, flag))
    return securing + _ALWAYS


def state_for(step: StepName) -> CaseState:
    return STEP_STATE[step]


def resume_step_after(step: StepName) -> StepName:
    """Where a retry resumes when ``step`` had failed.

    A re-block seen while waiting means the sender must be unblocked again, which starts with
    looking it up; every other step is simply run again.
    """
    if step is StepName.propagation:
        return StepName.check_restriction
    return step
