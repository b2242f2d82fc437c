"""Read models that leave the persistence layer: plain frozen values, never ORM rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from service.domain.decide import CaseView, StepView
from service.domain.states import CaseState, StepName, StepStatus


@dataclass(frozen=True, slots=True)
class StepRecord:
    name: str
    position: int
    status: str
    attempts: int
    failures: int
    started_at: datetime | None
    finished_at: datetime | None
    error: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class CredentialInfo:
    applied: bool
    expires_at: datetime | None
    revealed_at: datetime | None
    revealed_by: str | None
    destroyed_at: datetime | None
    destroyed_reason: str | None

    @property
    def available(self) -> bool:
        return self.applied and self.revealed_at is None and self.destroyed_at is None


@dataclass(frozen=True, slots=True)
class CaseSnapshot:
    id: str
    mailbox: str
    state: str
    outcome: str | None
    ticket_ref: str | None
    requested_by: str | None
    note: str | None
    actions: dict[str, Any]
    require_approval: bool
    restriction: dict[str, Any] | None
    last_error: dict[str, Any] | None
    next_action_at: datetime | None
    sending_restored_by: datetime | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    created_by: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    version: int
    steps: tuple[StepRecord, ...]
    credential: CredentialInfo | None

    @property
    def is_open(self) -> bool:
        return self.state not in {"resolved", "failed", "escalated", "cancelled"}

    def view(self) -> CaseView:
        return CaseView(
            state=CaseState(self.state),
            steps=tuple(StepView(StepName(s.name), StepStatus(s.status), s.attempts, s.failures) for s in self.steps),
            require_approval=self.require_approval,
            sending_restored_by=self.sending_restored_by,
        )

    def step(self, name: str) -> StepRecord:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)


@dataclass(frozen=True, slots=True)
class EventRecord:
    id: int
    case_id: str
    at: datetime
    actor: str
    type: str
    from_state: str | None
    to_state: str | None
    step: str | None
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Claim:
    case_id: str
    version: int
