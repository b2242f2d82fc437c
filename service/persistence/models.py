"""Tables. Alembic migrations are written from these (alembic/versions)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Column, Index, LargeBinary, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from service.persistence.types import BigIntId, JSONType, UTCDateTime, new_id


def _dt(*, nullable: bool = True, index: bool = False) -> Any:
    return Field(default=None, sa_type=UTCDateTime, nullable=nullable, index=index)


class Case(SQLModel, table=True):
    """One unblock case: a state-machine row. ``version`` guards every change (compare-and-set)."""

    __tablename__ = "cases"
    __table_args__ = (
        # At most one open case per mailbox (contract: a second create answers 409).
        Index(
            "uq_cases_open_mailbox",
            "mailbox",
            unique=True,
            sqlite_where=text("is_open = 1"),
            postgresql_where=text("is_open"),
        ),
        # The worker's question: which open cases are due, earliest first.
        Index(
            "ix_cases_due",
            "next_action_at",
            sqlite_where=text("is_open = 1"),
            postgresql_where=text("is_open"),
        ),
        # Retention's question: which closed cases finished before the cutoff.
        Index(
            "ix_cases_finished",
            "finished_at",
            sqlite_where=text("is_open = 0"),
            postgresql_where=text("NOT is_open"),
        ),
        Index("ix_cases_created", "created_at", "id"),
        # The list page of closed cases (a terminal state, or open=false), newest first. The open
        # cases are the newest, so on ix_cases_created such a page first walks past every open case;
        # PostgreSQL's planner prefers that walk even with ix_cases_state_created at hand (it takes
        # state and age as independent), so the page names the closed cases and reads this index.
        Index(
            "ix_cases_closed_created",
            "created_at",
            "id",
            sqlite_where=text("is_open = 0"),
            postgresql_where=text("NOT is_open"),
        ),
        Index("ix_cases_state_created", "state", "created_at", "id"),
        Index("ix_cases_mailbox_created", "mailbox", "created_at", "id"),
        Index("ix_cases_tenant_created", "tenant", "created_at", "id"),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=26)
    mailbox: str = Field(max_length=254)
    # The tenant it belongs to; None while intake could not tell yet (a worker decides).
    tenant: str | None = Field(default=None, max_length=64)
    state: str = Field(max_length=32)
    outcome: str | None = Field(default=None, max_length=32)
    is_open: bool = Field(default=True)
    ticket_ref: str | None = Field(default=None, max_length=128, index=True)
    requested_by: str | None = Field(default=None, max_length=128)
    note: str | None = Field(default=None, max_length=2000)
    actions: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONType, nullable=False))
    require_approval: bool = Field(default=False)
    restriction: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONType, nullable=True))
    last_error: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONType, nullable=True))
    # What the investigation found (service.domain.findings.Finding.as_dict items); None before it ran.
    findings: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSONType, nullable=True))
    # The case's JSON as the API serves it (records.render_document), rewritten with every change by
    # the one writer; None for cases last written before migration 0010 (readers render those).
    document: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    next_action_at: datetime | None = _dt()
    sending_restored_by: datetime | None = _dt()
    lease_owner: str | None = Field(default=None, max_length=128)
    lease_expires_at: datetime | None = _dt()
    created_by: str = Field(max_length=128)
    # Who opened it, as an identity rather than a display name (four-eyes approval compares these).
    created_by_kind: str | None = Field(default=None, max_length=32)
    created_by_id: str | None = Field(default=None, max_length=255)
    created_at: datetime = _dt(nullable=False)
    updated_at: datetime = _dt(nullable=False)
    finished_at: datetime | None = _dt()
    version: int = Field(default=1)


class CaseStep(SQLModel, table=True):
    """A durable step: checked before it runs, recorded after, keyed by (case, step)."""

    __tablename__ = "case_steps"

    case_id: str = Field(foreign_key="cases.id", primary_key=True, max_length=26, ondelete="CASCADE")
    name: str = Field(primary_key=True, max_length=32)
    position: int
    status: str = Field(max_length=16)
    attempts: int = 0
    failures: int = 0
    started_at: datetime | None = _dt()
    finished_at: datetime | None = _dt()
    error: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONType, nullable=True))


class CaseEvent(SQLModel, table=True):
    """The timeline: one row per change, appended in the transaction that made the change."""

    __tablename__ = "case_events"
    __table_args__ = (Index("ix_case_events_case", "case_id", "id"),)

    id: int | None = Field(default=None, sa_type=BigIntId, primary_key=True)
    case_id: str = Field(foreign_key="cases.id", max_length=26, ondelete="CASCADE")
    at: datetime = _dt(nullable=False)
    actor: str = Field(max_length=128)
    type: str = Field(max_length=48)
    from_state: str | None = Field(default=None, max_length=32)
    to_state: str | None = Field(default=None, max_length=32)
    step: str | None = Field(default=None, max_length=32)
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONType, nullable=False))


class Credential(SQLModel, table=True):
    """A temporary password, sealed (AES-GCM) before it is sent to the tenant; never stored in clear."""

    __tablename__ = "credentials"

    case_id: str = Field(foreign_key="cases.id", primary_key=True, max_length=26, ondelete="CASCADE")
    key_id: str = Field(max_length=32)
    sealed: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    created_at: datetime = _dt(nullable=False)
    applied_at: datetime | None = _dt()
    expires_at: datetime | None = _dt(index=True)
    revealed_at: datetime | None = _dt()
    revealed_by: str | None = Field(default=None, max_length=128)
    destroyed_at: datetime | None = _dt()
    destroyed_reason: str | None = Field(default=None, max_length=32)


class ApiKey(SQLModel, table=True):
    """An API key, stored as a SHA-256 hash; ``prefix`` identifies it in lists and logs."""

    __tablename__ = "api_keys"
    # Names are unique: audit records and logs name keys, and two keys called "servicenow"
    # would make those records ambiguous (the audit log also records the key id).
    __table_args__ = (Index("uq_api_keys_name", "name", unique=True),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=26)
    name: str = Field(max_length=128)
    prefix: str = Field(max_length=32, unique=True)
    key_hash: str = Field(max_length=64)
    scopes: list[str] = Field(default_factory=list, sa_column=Column(JSONType, nullable=False))
    # The tenants it may see; None: every tenant (the MSP's own staff).
    tenants: list[str] | None = Field(default=None, sa_column=Column(JSONType, nullable=True))
    created_at: datetime = _dt(nullable=False)
    expires_at: datetime | None = _dt()
    revoked_at: datetime | None = _dt()
    last_used_at: datetime | None = _dt()


class IdempotencyRecord(SQLModel, table=True):
    """The first response to a create with an Idempotency-Key, replayed for identical retries."""

    __tablename__ = "idempotency_records"
    __table_args__ = (UniqueConstraint("principal", "key", name="uq_idempotency_principal_key"),)

    id: int | None = Field(default=None, sa_type=BigIntId, primary_key=True)
    principal: str = Field(max_length=128)
    key: str = Field(max_length=255)
    request_hash: str = Field(max_length=64)
    status_code: int
    response: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONType, nullable=False))
    location: str | None = Field(default=None, max_length=255)
    created_at: datetime = _dt(nullable=False, index=True)


metadata = SQLModel.metadata


class AuditRecord(SQLModel, table=True):
    """The append-only audit log; each row is chained to the previous one by a keyed MAC.

    ``prev_hash`` and ``hash`` keep the names of the unkeyed chain they started as (0002);
    since 0006 they hold HMAC-SHA256 values under the audit key that ``key_id`` names.
    ``actor`` is a display name; ``actor_kind`` and ``actor_id`` say who it really was.
    """

    __tablename__ = "audit_log"

    seq: int = Field(primary_key=True, sa_type=BigIntId, sa_column_kwargs={"autoincrement": False})
    at: datetime = _dt(nullable=False)
    actor: str = Field(max_length=128)
    actor_kind: str = Field(max_length=16)
    actor_id: str = Field(max_length=512)
    action: str = Field(max_length=64, index=True)
    target: str | None = Field(default=None, max_length=128)
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONType, nullable=False))
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)
    key_id: str = Field(max_length=16)


class WebhookSubscription(SQLModel, table=True):
    """A receiver of signed events; its signing secret is kept sealed, never in clear."""

    __tablename__ = "webhook_subscriptions"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=26)
    url: str = Field(max_length=2048)
    events: list[str] = Field(default_factory=list, sa_column=Column(JSONType, nullable=False))
    description: str | None = Field(default=None, max_length=256)
    # The tenant scope of the key that created it: only those tenants' events are delivered (None: all).
    tenants: list[str] | None = Field(default=None, sa_column=Column(JSONType, nullable=True))
    secret_key_id: str = Field(max_length=32)
    secret_sealed: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_by: str = Field(max_length=128)
    created_at: datetime = _dt(nullable=False)
    deleted_at: datetime | None = _dt()


class OutboxEvent(SQLModel, table=True):
    """An event, written in the transaction of the change it reports (so none is lost or invented)."""

    __tablename__ = "outbox_events"

    id: int | None = Field(default=None, sa_type=BigIntId, primary_key=True)
    type: str = Field(max_length=48, index=True)
    case_id: str | None = Field(default=None, max_length=26, index=True)
    occurred_at: datetime = _dt(nullable=False)
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONType, nullable=False))


class WebhookDelivery(SQLModel, table=True):
    """One event to one subscription: retried with backoff, then dead-lettered."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_deliveries_due", "status", "next_attempt_at"),
        Index("ix_deliveries_order", "subscription_id", "ordering_key", "id"),
    )

    id: int | None = Field(default=None, sa_type=BigIntId, primary_key=True)
    subscription_id: str = Field(foreign_key="webhook_subscriptions.id", max_length=26, ondelete="CASCADE")
    event_id: int = Field(foreign_key="outbox_events.id", sa_type=BigIntId, ondelete="CASCADE")
    ordering_key: str = Field(max_length=300)
    status: str = Field(default="pending", max_length=16)
    attempts: int = 0
    next_attempt_at: datetime = _dt(nullable=False)
    lease_owner: str | None = Field(default=None, max_length=128)
    lease_expires_at: datetime | None = _dt()
    last_status_code: int | None = None
    last_error: str | None = Field(default=None, max_length=500)
    created_at: datetime = _dt(nullable=False)
    delivered_at: datetime | None = _dt()


class RestrictedSender(SQLModel, table=True):
    """The tenant's restricted list as last read (``cleared_at`` null = listed now), so the API
    serves it without asking the tenant and discovery reports each new restriction once."""

    __tablename__ = "restricted_senders"

    address: str = Field(primary_key=True, max_length=254)
    tenant: str = Field(default="default", max_length=64, index=True)
    reason: str = Field(default="", max_length=2000)
    blocked_at: datetime | None = _dt()
    changed_at: datetime | None = _dt()
    temporary_block: bool = Field(default=False)
    first_seen_at: datetime = _dt(nullable=False)
    last_seen_at: datetime = _dt(nullable=False)
    cleared_at: datetime | None = _dt()
    reported_at: datetime | None = _dt()
    case_id: str | None = Field(default=None, max_length=26)


class UiSession(SQLModel, table=True):
    """A dashboard sign-in, kept server-side so that logging out (or revoking the key) ends it."""

    __tablename__ = "ui_sessions"

    id_hash: str = Field(primary_key=True, max_length=64)  # SHA-256 of the id in the cookie, never the id
    key_id: str = Field(max_length=26, index=True)
    created_at: datetime = _dt(nullable=False)
    expires_at: datetime = _dt(nullable=False)
    revoked_at: datetime | None = _dt()


class TenantFacts(SQLModel, table=True):
    """What workers last read from a tenant, so API processes never need to ask it themselves."""

    __tablename__ = "tenant_facts"

    tenant: str = Field(primary_key=True, max_length=64)
    accepted_domains: list[str] | None = Field(default=None, sa_type=JSONType)
    domains_refreshed_at: datetime | None = _dt()
    senders_fetched_at: datetime | None = _dt()
    senders_refresh_requested_at: datetime | None = _dt()


class Lease(SQLModel, table=True):
    """A named lease: one holder at a time across processes (e.g. the discovery poller)."""

    __tablename__ = "leases"

    name: str = Field(primary_key=True, max_length=64)
    owner: str | None = Field(default=None, max_length=128)
    expires_at: datetime | None = _dt()


class Tenant(SQLModel, table=True):
    """A Microsoft 365 tenant the service acts on, besides the settings' own (``default``).

    Its identity is an app registration with a certificate; the remoting endpoint is the
    settings' UNBLOCK_PS_* unless overridden here. A remoting password is sealed like a
    temporary password (``ps_password_key_id`` names the key), never stored in clear.
    """

    __tablename__ = "tenants"

    name: str = Field(primary_key=True, max_length=32)
    organization: str = Field(max_length=255)
    app_id: str = Field(max_length=36)
    cert_thumbprint: str = Field(max_length=40)
    tenant_id: str | None = Field(default=None, max_length=36)
    password_backend: str = Field(default="graph", max_length=16)
    ps_server: str | None = Field(default=None, max_length=255)
    ps_port: int | None = Field(default=None)
    ps_ssl: bool | None = Field(default=None)
    ps_auth: str | None = Field(default=None, max_length=16)
    ps_username: str | None = Field(default=None, max_length=255)
    ps_password_key_id: str | None = Field(default=None, max_length=32)
    ps_password_sealed: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    ps_configuration_name: str | None = Field(default=None, max_length=255)
    status: str = Field(default="pending", max_length=16)
    status_detail: str | None = Field(default=None, max_length=500)
    created_at: datetime = _dt(nullable=False)
    updated_at: datetime = _dt(nullable=False)
    validated_at: datetime | None = _dt()
