"""Read models that leave the persistence layer: plain frozen values, never ORM rows."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from service.domain.audit import Actor
from service.domain.credential import CredentialView
from service.domain.decide import CaseView, StepView
from service.domain.findings import Finding
from service.domain.states import TERMINAL_STATES, CaseOutcome, CaseState, StepName, StepStatus


@dataclass(frozen=True, slots=True)
class StepRecord:
    name: StepName
    position: int
    status: StepStatus
    attempts: int
    failures: int
    started_at: datetime | None
    finished_at: datetime | None
    error: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class CaseSnapshot:
    """A case as read from the database, in the domain's types."""

    id: str
    mailbox: str
    state: CaseState
    outcome: CaseOutcome | None
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
    created_by_kind: str | None
    created_by_id: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    version: int
    steps: tuple[StepRecord, ...]
    credential: CredentialView | None
    findings: tuple[Finding, ...] | None = None  # None: no investigation has run
    tenant: str | None = None  # None: intake could not tell yet; a worker decides

    @property
    def is_open(self) -> bool:
        return self.state not in TERMINAL_STATES

    @property
    def opened_by(self) -> Actor:
        """Who opened the case (kind and id are empty for cases opened before they were recorded)."""
        return Actor(self.created_by_kind or "", self.created_by_id or "", self.created_by)

    def view(self) -> CaseView:
        return CaseView(
            state=self.state,
            steps=tuple(StepView(s.name, s.status, s.attempts, s.failures) for s in self.steps),
            require_approval=self.require_approval,
            sending_restored_by=self.sending_restored_by,
            findings=self.findings or (),
            outcome=self.outcome,
        )

    def step(self, name: StepName) -> StepRecord:
        for step in self.steps:
            if step.name is name:
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
class Lease:
    """A case held by one worker until a time (the same lease a claim takes)."""

    owner: str
    until: datetime


@dataclass(frozen=True, slots=True)
class Claim:
    """A case a worker leased, as the claim's transaction left it (no second read to start on it)."""

    case_id: str
    version: int
    case: CaseSnapshot


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
        "tenant": case.tenant,
        "state": case.state.value,
        "outcome": case.outcome.value if case.outcome else None,
        "ticket_ref": case.ticket_ref,
        "requested_by": case.requested_by,
        "note": case.note,
        "actions": dict(case.actions),
        "restriction": restriction,
        "findings": [f.as_dict() for f in case.findings] if case.findings is not None else None,
        "steps": [
            {
                "name": s.name.value,
                "status": s.status.value,
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


def render_document(document: Any) -> bytes:
    """A case document as the bytes the API sends (the same encoding as FastAPI's JSONResponse), so a
    stored document and one rendered on the spot are byte for byte the same, ETag included."""
    return json.dumps(document, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode()


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
