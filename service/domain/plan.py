"""The step plan: which steps a case runs, in order, given what the requester asked for."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from service.domain.findings import Containment, ContainmentPlan
from service.domain.states import StepName


@dataclass(frozen=True, slots=True)
class RequestedActions:
    """The ``actions`` a requester sent: each true, false, or left to the service (None).

    Left out, the password reset and the sign-out happen (Microsoft's procedure starts with them)
    and the containment actions follow ``UNBLOCK_CONTAINMENT``; an explicit false skips one even
    under ``enforce``, an explicit true does it even under ``report``.
    """

    reset_password: bool | None = None
    revoke_sessions: bool | None = None
    disable_suspicious_inbox_rules: bool | None = None
    remove_forwarding: bool | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> RequestedActions:
        data = data or {}
        return cls(**{k: None if v is None else bool(v) for k, v in data.items() if k in cls.__dataclass_fields__})

    def resolve(self, containment: Containment) -> Actions:
        """What this case will do, under the operator's containment policy."""
        contain = containment is Containment.enforce

        def given(value: bool | None, default: bool) -> bool:
            return default if value is None else value

        return Actions(
            reset_password=given(self.reset_password, True),
            revoke_sessions=given(self.revoke_sessions, True),
            investigate=containment is not Containment.off,
            disable_suspicious_inbox_rules=given(self.disable_suspicious_inbox_rules, contain),
            remove_forwarding=given(self.remove_forwarding, contain),
        )


@dataclass(frozen=True, slots=True)
class Actions:
    """What a case does (the ``actions`` of the case document): the request resolved against the policy."""

    reset_password: bool = True
    revoke_sessions: bool = True
    investigate: bool = False  # cases opened before investigations existed have none
    disable_suspicious_inbox_rules: bool = False
    remove_forwarding: bool = False

    def as_dict(self) -> dict[str, bool]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Actions:
        data = data or {}
        return cls(**{k: bool(v) for k, v in data.items() if k in cls.__dataclass_fields__})

    @property
    def containment(self) -> ContainmentPlan:
        return ContainmentPlan(
            disable_rules=self.disable_suspicious_inbox_rules, clear_forwarding=self.remove_forwarding
        )


_PREPARING_BY_ACTION: tuple[tuple[str, StepName], ...] = (
    ("reset_password", StepName.reset_password),
    ("revoke_sessions", StepName.revoke_sessions),
    ("investigate", StepName.investigate),
    ("disable_suspicious_inbox_rules", StepName.disable_inbox_rules),
    ("remove_forwarding", StepName.remove_forwarding),
)

_ALWAYS: tuple[StepName, ...] = (
    StepName.check_restriction,
    StepName.unblock,
    StepName.verify,
    StepName.propagation,
)


def build_plan(actions: Actions) -> tuple[StepName, ...]:
    """Secure the account first (Microsoft: reset the password at once), investigate, contain, then unblock."""
    preparing = tuple(step for flag, step in _PREPARING_BY_ACTION if getattr(actions, flag))
    return preparing + _ALWAYS


def resume_step_after(step: StepName) -> StepName:
    """Where a retry resumes when ``step`` had failed.

    A re-block seen while waiting means the sender must be unblocked again, which starts with
    looking it up; every other step is simply run again.
    """
    if step is StepName.propagation:
        return StepName.check_restriction
    return step
