"""Webhook subscriptions and their deliveries: claim in order, record outcomes, dead-letter, redeliver."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, case, exists
from sqlalchemy.orm import aliased
from sqlmodel import col, func, select, update

from service.domain.audit import Actor, AuditSigner
from service.errors import Conflict, NotFound, WebhookNotFound
from service.persistence import audit, outbox
from service.persistence.db import Database
from service.persistence.models import OutboxEvent, WebhookDelivery, WebhookSubscription


class DeliveryStatus(StrEnum):
    """Where one delivery of one event to one subscription stands."""

    pending = "pending"  # due now or after a back-off
    delivered = "delivered"
    dead = "dead"  # given up after UNBLOCK_WEBHOOK_MAX_AGE (redeliver makes it pending again)
    cancelled = "cancelled"  # its subscription was deleted


#: What a failed delivery records, and what the API shows, instead of the exception's text: the
#: text ("Connection refused", "Name or service not known", a TLS alert) told whoever chose the
#: URL what answers inside the service's network, a port-scan oracle. ``http_<status>`` is the
#: receiver's own answer.
DELIVERY_ERRORS = ("timeout", "connect_failed", "tls", "refused_address", "http_<status>")
_CATEGORY = re.compile(r"^(?:timeout|connect_failed|tls|refused_address|http_[1-5][0-9]{2})$")
_LEGACY_HTTP = re.compile(r"^HTTP ([1-5][0-9]{2})$")


def delivery_error(stored: str | None) -> str | None:
    """The category of a stored failure; a row written before categories existed gets the nearest one."""
    if not stored or _CATEGORY.match(stored):
        return stored or None
    if match := _LEGACY_HTTP.match(stored):
        return f"http_{match.group(1)}"
    if "Timeout" in stored.split(":", 1)[0]:
        return "timeout"
    if "SSL" in stored or "CERTIFICATE" in stored:
        return "tls"
    return "connect_failed"


@dataclass(frozen=True, slots=True)
class SubscriptionRecord:
    id: str
    url: str
    events: tuple[str, ...]
    description: str | None
    created_by: str
    created_at: datetime
    secret_key_id: str
    secret_sealed: bytes
    tenants: tuple[str, ...] | None = None  # only these tenants' events are delivered (None: every tenant's)


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    id: int
    subscription_id: str
    event_id: int
    event_type: str
    status: str
    attempts: int
    next_attempt_at: datetime
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


@dataclass(frozen=True, slots=True)
class DueDelivery:
    id: int
    attempts: int
    created_at: datetime
    url: str
    secret_key_id: str
    secret_sealed: bytes
    subscription_id: str
    event_id: int
    payload: dict[str, Any]


def _subscription(row: WebhookSubscription) -> SubscriptionRecord:
    return SubscriptionRecord(
        id=row.id,
        url=row.url,
        events=tuple(row.events),
        description=row.description,
        created_by=row.created_by,
        created_at=row.created_at,
        secret_key_id=row.secret_key_id,
        secret_sealed=bytes(row.secret_sealed),
        tenants=tuple(row.tenants) if row.tenants is not None else None,
    )


async def create_subscription(
    db: Database,
    *,
    subscription_id: str,
    url: str,
    events: list[str],
    description: str | None,
    secret_key_id: str,
    secret_sealed: bytes,
    actor: Actor,
    signer: AuditSigner,
    now: datetime,
    tenants: list[str] | None = None,
) -> SubscriptionRecord:
    row = WebhookSubscription(
        id=subscription_id,
        url=url,
        events=events,
        description=description,
        tenants=tenants,
        secret_key_id=secret_key_id,
        secret_sealed=secret_sealed,
        created_by=actor.name,
        created_at=now,
    )
    async with db.write() as session:
        session.add(row)
        await session.flush()
        await audit.append(
            session,
            signer=signer,
            at=now,
            actor=actor,
            action="webhook.created",
            target=row.id,
            detail={"url": url, "events": events, **({"tenants": tenants} if tenants is not None else {})},
        )
    return _subscription(row)


async def list_subscriptions(db: Database) -> list[SubscriptionRecord]:
    async with db.read() as session:
        rows = (
            await session.exec(
                select(WebhookSubscription)
                .where(col(WebhookSubscription.deleted_at).is_(None))
                .order_by(col(WebhookSubscription.created_at))
            )
        ).all()
    return [_subscription(r) for r in rows]


async def get_subscription(db: Database, *, subscription_id: str) -> SubscriptionRecord:
    async with db.read() as session:
        row = await session.get(WebhookSubscription, subscription_id)
    if row is None or row.deleted_at is not None:
        raise WebhookNotFound(f"no webhook subscription has id {subscription_id}")
    return _subscription(row)


async def delete_subscription(
    db: Database, *, subscription_id: str, actor: Actor, signer: AuditSigner, now: datetime
) -> None:
    async with db.write() as session:
        row = await session.get(WebhookSubscription, subscription_id)
        if row is None or row.deleted_at is not None:
            raise WebhookNotFound(f"no webhook subscription has id {subscription_id}")
        row.deleted_at = now
        session.add(row)
        await session.exec(
            update(WebhookDelivery)
            .where(
                col(WebhookDelivery.subscription_id) == subscription_id,
                col(WebhookDelivery.status) == DeliveryStatus.pending,
            )
            .values(status=DeliveryStatus.cancelled.value)
        )
        await audit.append(
            session,
            signer=signer,
            at=now,
            actor=actor,
            action="webhook.deleted",
            target=subscription_id,
            detail={"url": row.url},
        )


async def list_deliveries(
    db: Database, *, subscription_id: str, status: str | None = None, limit: int = 100
) -> list[DeliveryRecord]:
    await get_subscription(db, subscription_id=subscription_id)
    query = (
        select(WebhookDelivery, OutboxEvent.type)
        .join(OutboxEvent, col(OutboxEvent.id) == col(WebhookDelivery.event_id))
        .where(col(WebhookDelivery.subscription_id) == subscription_id)
    )
    if status is not None:
        query = query.where(col(WebhookDelivery.status) == status)
    query = query.order_by(col(WebhookDelivery.id).desc()).limit(limit)
    async with db.read() as session:
        rows = (await session.exec(query)).all()
    return [
        DeliveryRecord(
            id=int(d.id or 0),
            subscription_id=d.subscription_id,
            event_id=d.event_id,
            event_type=event_type,
            status=d.status,
            attempts=d.attempts,
            next_attempt_at=d.next_attempt_at,
            last_status_code=d.last_status_code,
            last_error=delivery_error(d.last_error),
            created_at=d.created_at,
            delivered_at=d.delivered_at,
        )
        for d, event_type in rows
    ]


async def redeliver(
    db: Database, *, subscription_id: str, delivery_id: int, actor: Actor, signer: AuditSigner, now: datetime
) -> None:
    """Queue a dead-lettered delivery again; anything else would send an event twice or to a
    subscription that was deleted."""
    async with db.write() as session:
        subscription = await session.get(WebhookSubscription, subscription_id)
        if subscription is None or subscription.deleted_at is not None:
            raise WebhookNotFound(f"no webhook subscription has id {subscription_id}")
        row = await session.get(WebhookDelivery, delivery_id)
        if row is None or row.subscription_id != subscription_id:
            raise NotFound(f"subscription {subscription_id} has no delivery {delivery_id}")
        if row.status != DeliveryStatus.dead:
            raise Conflict(f"only a dead delivery can be redelivered; delivery {delivery_id} is {row.status}")
        row.status, row.attempts, row.next_attempt_at = DeliveryStatus.pending.value, 0, now
        row.created_at = now  # a fresh retry window
        row.lease_owner = row.lease_expires_at = None
        session.add(row)
        await outbox.notify_deliveries(session)  # the dispatcher may run in another process
        await audit.append(
            session,
            signer=signer,
            at=now,
            actor=actor,
            action="webhook.redelivered",
            target=subscription_id,
            detail={"delivery_id": delivery_id},
        )


def _waiting_behind_an_earlier_delivery() -> Any:
    """A pending delivery whose subscription still owes the same case an earlier event."""
    earlier = aliased(WebhookDelivery)
    return exists().where(
        and_(
            col(earlier.subscription_id) == col(WebhookDelivery.subscription_id),
            col(earlier.ordering_key) == col(WebhookDelivery.ordering_key),
            col(earlier.id) < col(WebhookDelivery.id),
            col(earlier.status) == DeliveryStatus.pending,
        )
    )


async def claim_due(db: Database, *, worker_id: str, now: datetime, lease: float, limit: int) -> list[DueDelivery]:
    """Due deliveries whose earlier events (same subscription, same case) are already out."""
    blocked = _waiting_behind_an_earlier_delivery()
    free = (col(WebhookDelivery.lease_expires_at).is_(None)) | (col(WebhookDelivery.lease_expires_at) < now)
    due = (
        select(WebhookDelivery.id)
        .where(
            col(WebhookDelivery.status) == DeliveryStatus.pending,
            col(WebhookDelivery.next_attempt_at) <= now,
            free,
            ~blocked,
        )
        .order_by(col(WebhookDelivery.id))
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    async with db.write() as session:
        ids = [int(i) for i in (await session.exec(due)).all() if i is not None]
        if not ids:
            return []
        await session.exec(
            update(WebhookDelivery)
            .where(col(WebhookDelivery.id).in_(ids))
            .values(lease_owner=worker_id, lease_expires_at=now + timedelta(seconds=lease))
        )
        rows = (
            await session.exec(
                select(WebhookDelivery, WebhookSubscription, OutboxEvent)
                .join(WebhookSubscription, col(WebhookSubscription.id) == col(WebhookDelivery.subscription_id))
                .join(OutboxEvent, col(OutboxEvent.id) == col(WebhookDelivery.event_id))
                .where(col(WebhookDelivery.id).in_(ids))
                .order_by(col(WebhookDelivery.id))
            )
        ).all()
    return [
        DueDelivery(
            id=int(d.id or 0),
            attempts=d.attempts,
            created_at=d.created_at,
            url=s.url,
            secret_key_id=s.secret_key_id,
            secret_sealed=bytes(s.secret_sealed),
            subscription_id=s.id,
            event_id=int(e.id or 0),
            payload=dict(e.payload),
        )
        for d, s, e in rows
    ]


async def record_outcome(
    db: Database,
    *,
    delivery_id: int,
    worker_id: str,
    now: datetime,
    delivered: bool,
    status_code: int | None,
    error: str | None,
    next_attempt_at: datetime | None,
) -> None:
    """Delivered, or scheduled again, or (``next_attempt_at`` None) dead-lettered.

    ``error`` is one of :data:`DELIVERY_ERRORS`, never free text (see there why).
    """
    if error is not None and not _CATEGORY.match(error):
        raise ValueError(f"{error!r} is not a delivery error category ({', '.join(DELIVERY_ERRORS)})")
    values: dict[str, Any] = {
        "attempts": WebhookDelivery.attempts + 1,
        "last_status_code": status_code,
        "last_error": error,
        "lease_owner": None,
        "lease_expires_at": None,
    }
    if delivered:
        values.update(status=DeliveryStatus.delivered.value, delivered_at=now, last_error=None)
    elif next_attempt_at is None:
        values.update(status=DeliveryStatus.dead.value)
    else:
        values.update(next_attempt_at=next_attempt_at)
    async with db.write() as session:
        await session.exec(
            update(WebhookDelivery)
            .where(col(WebhookDelivery.id) == delivery_id, col(WebhookDelivery.lease_owner) == worker_id)
            .values(**values)
        )


async def next_due_at(db: Database) -> datetime | None:
    """When :func:`claim_due` could next return something, by the same rules it applies.

    A delivery waiting behind an earlier one for the same case is not counted (the earlier one
    decides), and one leased by a dispatcher counts from its lease's end: otherwise a failing
    receiver's backlog, or a delivery in flight elsewhere, would look due now and the
    dispatcher would spin on empty claims.
    """
    lease_end = col(WebhookDelivery.lease_expires_at)
    attempt = col(WebhookDelivery.next_attempt_at)
    ready_at = case((lease_end.is_not(None) & (lease_end > attempt), lease_end), else_=attempt)
    async with db.read() as session:
        return (
            await session.exec(
                select(func.min(ready_at)).where(
                    col(WebhookDelivery.status) == DeliveryStatus.pending, ~_waiting_behind_an_earlier_delivery()
                )
            )
        ).first()
