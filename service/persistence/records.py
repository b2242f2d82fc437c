"""Read models that leave the persistence layer: plain frozen values, never ORM rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
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


def _ts(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def case_document(case: CaseSnapshot) -> dict[str, Any]:
    """A case in the contract's JSON shape (section 4): what the API returns and webhooks carry."""
    credential = None
    if case.credential is not None and (case.credential.applied or case.credential.revealed_at):
        credential = {
            "available": case.credential.available,
            "expires_at": _ts(case.credential.expires_at),
            "revealed_at": _ts(case.credential.revealed_at),
        }
    restriction = dict(case.restriction) if case.restriction else None
    if restriction is not None:
        for key in ("blocked_at", "changed_at"):
            value = restriction.get(key)
            if value:
                restriction[key] = _ts(datetime.fromisoformat(str(value).replace("Z", "+00:00")))
    return {
        "id": case.id,
        "mailbox": case.mailbox,
        "state": case.state,
        "outcome": case.outcome,
        "ticket_ref": case.ticket_ref,
        "requested_by": case.requested_by,
        "note": case.note,
        "actions": dict(case.actions),
        "restriction": restriction,
        "steps": [
            {
                "name": s.name,
                "status": s.status,
                "attempts": s.attempts,
                "started_at": _ts(s.started_at),
                "finished_at": _ts(s.finished_at),
                "error": _error(s.error),
            }
            for s in case.steps
        ],
        "credential": credential,
        "last_error": _error(case.last_error),
        "next_action_at": _ts(case.next_action_at),
        "sending_restored_by": _ts(case.sending_restored_by),
        "created_by": case.created_by,
        "created_at": _ts(case.created_at),
        "updated_at": _ts(case.updated_at),
        "version": case.version,
    }


def _error(error: dict[str, Any] | None) -> dict[str, Any] | None:
    if not error:
        return None
    return {
        "code": str(error.get("code")),
        "message": str(error.get("message", "")),
        "retryable": bool(error.get("retryable")),
    }


def event_document(event: EventRecord) -> dict[str, Any]:
    return {
        "id": event.id,
        "at": _ts(event.at),
        "actor": event.actor,
        "type": event.type,
        "from_state": event.from_state,
        "to_state": event.to_state,
        "step": event.step,
        "detail": event.detail,
    }
