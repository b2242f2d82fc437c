"""Request and response bodies (contract section 4), named along the ladder CaseCreate → CasePublic → CasesPage."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from service.domain.findings import FindingAction, FindingKind
from service.domain.states import CaseOutcome, CaseState, StepName, StepStatus
from service.domain.timeline import EventType
from service.errors import InvalidMailbox
from service.security.inputs import normalize_mailbox

_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
_MULTILINE = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"  # text without control characters but line breaks and tabs

EXAMPLE_CASE: dict[str, Any] = {
    "id": "01jd8v6k0s3x4y5z6a7b8c9d0e",
    "mailbox": "rob@contoso.com",
    "tenant": "default",
    "state": "awaiting_propagation",
    "outcome": None,
    "ticket_ref": "INC0012345",
    "requested_by": "servicedesk",
    "note": None,
    "actions": {
        "reset_password": True,
        "revoke_sessions": True,
        "investigate": True,
        "disable_suspicious_inbox_rules": True,
        "remove_forwarding": True,
    },
    "findings": [
        {
            "kind": "inbox_rule",
            "key": "rob\\1003",
            "summary": 'inbox rule "invoice"',
            "details": {"name": "invoice", "enabled": True, "forward_to": ["payments@fabrikam.example"]},
            "suspicious": True,
            "reasons": [
                "sends mail outside the tenant to payments@fabrikam.example",
                "deletes the messages it matches",
            ],
            "action": "disabled",
        }
    ],
    "restriction": {
        "reason": "EmailSendingLimitExceeded;InternalRecipientCountToday=12;ExternalRecipientCountToday=480;"
        "ExceedingLimitType=External",
        "limit_type": "External",
        "internal_recipients_today": 12,
        "external_recipients_today": 480,
        "blocked_at": "2026-11-26T08:02:11+00:00",
        "changed_at": "2026-11-26T08:02:11+00:00",
        "temporary_block": False,
    },
    "steps": [
        {
            "name": "reset_password",
            "status": "succeeded",
            "attempts": 1,
            "started_at": "2026-11-26T09:00:00.120000Z",
            "finished_at": "2026-11-26T09:00:01.310000Z",
            "error": None,
        }
    ],
    "credential": {"available": True, "expires_at": "2026-11-27T09:00:01.310000Z", "revealed_at": None},
    "last_error": None,
    "next_action_at": "2026-11-26T09:15:03Z",
    "sending_restored_by": "2026-11-26T13:00:03Z",
    "created_by": "servicenow",
    "created_at": "2026-11-26T09:00:00Z",
    "updated_at": "2026-11-26T09:00:03Z",
    "version": 7,
}


class ActionsIn(BaseModel):
    """What to do besides the unblock. Leave a field out for the service's default: the reset and the
    sign-out happen, and containment follows `UNBLOCK_CONTAINMENT` (enforce, report or off); `false`
    skips an action even under enforce, `true` does it even under report."""

    model_config = ConfigDict(extra="forbid")

    reset_password: StrictBool | None = Field(None, description="reset the password at once (never e-mailed)")
    revoke_sessions: StrictBool | None = Field(None, description="sign the account out everywhere")
    disable_suspicious_inbox_rules: StrictBool | None = Field(
        None, description="disable rules that forward mail out, delete, hide or mark it read, or trigger on payments"
    )
    remove_forwarding: StrictBool | None = Field(None, description="clear mailbox forwarding outside the tenant")


class ActionsPublic(BaseModel):
    """What the case does: the request resolved against the containment policy."""

    reset_password: bool
    revoke_sessions: bool
    investigate: bool = Field(description="look at rules, forwarding, delegates, sign-in methods and app consents")
    disable_suspicious_inbox_rules: bool
    remove_forwarding: bool


class FindingPublic(BaseModel):
    """Something the investigation found, why it matters, and what was done about it."""

    kind: FindingKind
    key: str = Field(description="what it is about: the rule's identity, the method's or grant's id, ...")
    summary: str
    details: dict[str, Any]
    suspicious: bool
    reasons: list[str]
    action: FindingAction = Field(
        description="none; disable/clear (containment will); disabled/cleared (done and read back); reported "
        "(left in place); review (a person must judge: the case stops for approval before the unblock)"
    )


class CaseCreate(BaseModel):
    """Open a case for one restricted mailbox."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "mailbox": "rob@contoso.com",
                    "ticket_ref": "INC0012345",
                    "requested_by": "servicedesk",
                    "note": "user reports bounce 5.1.8",
                    "actions": {"reset_password": True, "revoke_sessions": True},
                }
            ]
        },
    )

    mailbox: str = Field(
        description="the restricted sender: one plain SMTP address in an accepted domain", max_length=320
    )
    ticket_ref: str | None = Field(None, max_length=128, pattern=_PRINTABLE, description="your ticket number")
    requested_by: str | None = Field(None, max_length=128, pattern=_PRINTABLE, description="who asked")
    note: str | None = Field(
        None, max_length=2000, pattern=_MULTILINE, description="free text for the timeline (lines and tabs allowed)"
    )
    actions: ActionsIn = Field(default_factory=ActionsIn)
    tenant: str | None = Field(
        None,
        max_length=32,
        pattern=r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$",
        description="the tenant the mailbox belongs to; left out, the tenant whose accepted domains hold its domain",
    )

    @field_validator("mailbox")
    @classmethod
    def _plain_address(cls, value: str) -> str:
        try:
            return normalize_mailbox(value)
        except InvalidMailbox as error:
            raise ValueError(error.message) from None


class RestrictionPublic(BaseModel):
    reason: str
    limit_type: str | None
    internal_recipients_today: int | None
    external_recipients_today: int | None
    blocked_at: datetime | None
    changed_at: datetime | None
    temporary_block: bool


class ErrorPublic(BaseModel):
    code: str = Field(examples=["unblock_limit_exceeded"])
    message: str
    retryable: bool


class StepPublic(BaseModel):
    name: StepName
    status: StepStatus
    attempts: int
    started_at: datetime | None
    finished_at: datetime | None
    error: ErrorPublic | None


class CredentialPublic(BaseModel):
    available: bool = Field(description="a temporary password waits to be revealed (once)")
    expires_at: datetime | None
    revealed_at: datetime | None


class CasePublic(BaseModel):
    """A case as the contract shows it."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE_CASE]})

    id: str
    mailbox: str
    tenant: str | None = Field(description="the tenant it belongs to; null until a worker has decided")
    state: CaseState
    outcome: CaseOutcome | None
    ticket_ref: str | None
    requested_by: str | None
    note: str | None
    actions: ActionsPublic
    restriction: RestrictionPublic | None
    findings: list[FindingPublic] | None = Field(description="what the investigation found; null before it ran")
    steps: list[StepPublic]
    credential: CredentialPublic | None
    last_error: ErrorPublic | None
    next_action_at: datetime | None
    sending_restored_by: datetime | None
    created_by: str
    created_at: datetime
    updated_at: datetime
    version: int


class CasesPage(BaseModel):
    items: list[CasePublic]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last")


class EventPublic(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 42,
                    "at": "2026-11-26T09:00:02.310000Z",
                    "actor": "worker",
                    "type": "state.changed",
                    "from_state": "unblocking",
                    "to_state": "verifying",
                    "step": None,
                    "detail": {"from": "unblocking", "to": "verifying", "reason": "unblocked"},
                }
            ]
        }
    )

    id: int
    at: datetime
    actor: str = Field(description="the API key's name, `worker`, or `discovery`")
    type: EventType
    from_state: CaseState | None
    to_state: CaseState | None
    step: StepName | None
    detail: dict[str, Any]


class EventsPage(BaseModel):
    items: list[EventPublic]


class RevealedCredential(BaseModel):
    """Shown once. Hand it to the user in person or by phone; never by e-mail."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"password": "Gx7!mQ2#pL9zR4wT8vYk", "expires_at": "2026-11-27T09:00:01Z"}]}
    )

    password: str
    expires_at: datetime
