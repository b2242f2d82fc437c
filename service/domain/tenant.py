"""What the tenant tells us, as plain values: the bridge returns these, the engine reads them.

Exchange reports why a sender was restricted in one ``;``-separated ``Reason`` string, e.g.
``EmailSendingLimitExceeded;InternalRecipientCountToday=12;ExternalRecipientCountToday=480;ExceedingLimitType=External``.
:func:`parse_reason` keeps the raw string and lifts out the fields a service desk looks at.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class ReasonFields:
    raw: str
    kind: str | None
    limit_type: str | None
    internal_recipients_today: int | None
    external_recipients_today: int | None


def _int_or_none(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def parse_reason(reason: str | None) -> ReasonFields:
    """Split a Reason string; unknown parts are kept in ``raw`` and never raise."""
    raw = reason or ""
    parts = [p.strip() for p in raw.split(";") if p.strip()]
    named: dict[str, str] = {}
    kind: str | None = None
    for part in parts:
        if "=" in part:
            key, _, value = part.partition("=")
            named[key.strip().lower()] = value.strip()
        elif kind is None:
            kind = part
    return ReasonFields(
        raw=raw,
        kind=kind,
        limit_type=named.get("exceedinglimittype") or None,
        internal_recipients_today=_int_or_none(named.get("internalrecipientcounttoday")),
        external_recipients_today=_int_or_none(named.get("externalrecipientcounttoday")),
    )


@dataclass(frozen=True, slots=True)
class Restriction:
    """One entry of the restricted list (Get-BlockedSenderAddress)."""

    sender_address: str
    reason: str
    blocked_at: datetime | None
    changed_at: datetime | None
    temporary_block: bool

    def as_case_field(self) -> dict[str, Any]:
        """The ``restriction`` object of a case (contract section 4)."""
        fields = parse_reason(self.reason)
        return {
            "reason": fields.raw,
            "limit_type": fields.limit_type,
            "internal_recipients_today": fields.internal_recipients_today,
            "external_recipients_today": fields.external_recipients_today,
            "blocked_at": self.blocked_at.isoformat() if self.blocked_at else None,
            "changed_at": self.changed_at.isoformat() if self.changed_at else None,
            "temporary_block": self.temporary_block,
        }


@dataclass(frozen=True, slots=True)
class InboxRule:
    identity: str
    name: str
    enabled: bool
    forward_to: tuple[str, ...] = ()
    redirect_to: tuple[str, ...] = ()
    delete_message: bool = False
    move_to_folder: str | None = None

    @property
    def suspicious(self) -> bool:
        """Rules attackers plant: forward or redirect mail out, delete it, or hide it away."""
        hidden = (self.move_to_folder or "").lower() in {
            "rss feeds",
            "rss subscriptions",
            "conversation history",
            "archive",
            "junk email",
            "deleted items",
        }
        return self.enabled and bool(self.forward_to or self.redirect_to or self.delete_message or hidden)


@dataclass(frozen=True, slots=True)
class UserInfo:
    upn: str
    on_premises_sync: bool
    account_enabled: bool = True
