"""What the tenant tells us, as plain values: the bridge returns these, the engine reads them.

Exchange reports why a sender was restricted in one ``;``-separated ``Reason`` string, e.g.
``EmailSendingLimitExceeded;InternalRecipientCountToday=12;ExternalRecipientCountToday=480;ExceedingLimitType=External``.
:func:`parse_reason` keeps the raw string and lifts out the fields a service desk looks at.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    """One inbox rule as Get-InboxRule reports it (addresses already taken out of "Name [SMTP:address]")."""

    identity: str
    name: str
    enabled: bool
    forward_to: tuple[str, ...] = ()
    forward_as_attachment_to: tuple[str, ...] = ()
    redirect_to: tuple[str, ...] = ()
    delete_message: bool = False
    soft_delete_message: bool = False
    move_to_folder: str | None = None
    mark_as_read: bool = False
    subject_contains: tuple[str, ...] = ()
    subject_or_body_contains: tuple[str, ...] = ()
    body_contains: tuple[str, ...] = ()
    hidden: bool = False  # returned only with -IncludeHidden


@dataclass(frozen=True, slots=True)
class Forwarding:
    """A mailbox's own forwarding (Get-Mailbox): to an SMTP address, or to a recipient of the directory."""

    smtp_address: str | None = None  # ForwardingSmtpAddress without its "smtp:" prefix
    address: str | None = None  # ForwardingAddress: a recipient's identity
    address_smtp: str | None = None  # that recipient's primary SMTP address, when it could be read
    deliver_and_forward: bool = False


@dataclass(frozen=True, slots=True)
class MailboxPermission:
    """One Get-MailboxPermission entry."""

    user: str
    rights: tuple[str, ...]
    inherited: bool = False
    deny: bool = False


@dataclass(frozen=True, slots=True)
class RecipientPermission:
    """One Get-RecipientPermission entry (Send As)."""

    trustee: str
    rights: tuple[str, ...]
    access_control_type: str = "Allow"
    inherited: bool = False


@dataclass(frozen=True, slots=True)
class AuthMethod:
    """One sign-in method (Get-MgUserAuthenticationMethod): its Graph type and what Graph says about it."""

    id: str
    odata_type: str  # e.g. #microsoft.graph.microsoftAuthenticatorAuthenticationMethod
    display_name: str | None = None
    created_at: datetime | None = None  # published for some kinds only
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """microsoftAuthenticator, phone, fido2, password... (the type without its namespace and suffix)."""
        name = self.odata_type.rsplit(".", 1)[-1]
        return name.removesuffix("AuthenticationMethod") or name


@dataclass(frozen=True, slots=True)
class OAuthGrant:
    """A delegated permission grant (Get-MgUserOauth2PermissionGrant)."""

    id: str
    client_id: str  # the client service principal's object id
    consent_type: str
    resource_id: str
    scopes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ServicePrincipal:
    """The app a grant was given to (Get-MgServicePrincipal)."""

    id: str
    display_name: str
    app_id: str
    owner_tenant_id: str | None = None
    publisher_name: str | None = None
    verified_publisher: str | None = None  # the verified publisher's display name, when there is one


@dataclass(frozen=True, slots=True)
class UserInfo:
    upn: str
    on_premises_sync: bool
    account_enabled: bool = True
    object_id: str | None = None  # the directory object id (Get-MgUser Id)
