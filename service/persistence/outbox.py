"""The outbox: events written in the same transaction as the change they report.

Each event is fanned out at once to the subscriptions that want it, as one delivery row per
subscription, still inside that transaction. So an event exists exactly when its change was
committed: none is lost if the process dies after the commit, and none is sent for a change
that rolled back. Delivery happens later, from these rows (:mod:`service.notifications`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from service.domain.tenancy import visible
from service.persistence.models import OutboxEvent, WebhookDelivery, WebhookSubscription

WEBHOOK_CHANNEL = "unblock_webhooks"


def timestamp(value: datetime) -> str:
    """The wire form of a time in webhook payloads (RFC 3339, UTC, ``Z``)."""
    return value.isoformat().replace("+00:00", "Z")


async def emit(
    session: AsyncSession,
    *,
    type: str,
    at: datetime,
    data: dict[str, Any],
    case_id: str | None,
    ordering_key: str,
    tenant: str | None,
) -> OutboxEvent:
    """Store an event and a delivery for each subscription that wants its type and may see its tenant.

    A subscription limited to tenants (made with a key limited to them) gets only their events;
    an event of no tenant yet (a case intake could not place) goes only to unlimited ones.
    """
    event = OutboxEvent(
        type=type, case_id=case_id, occurred_at=at, payload={"type": type, "timestamp": timestamp(at), "data": data}
    )
    session.add(event)
    await session.flush()
    subscriptions = (
        await session.exec(select(WebhookSubscription).where(col(WebhookSubscription.deleted_at).is_(None)))
    ).all()
    wanted = [s for s in subscriptions if (type in s.events or "*" in s.events) and visible(tenant, s.tenants)]
    for subscription in wanted:
        session.add(
            WebhookDelivery(
                subscription_id=subscription.id,
                event_id=int(event.id or 0),
                ordering_key=ordering_key,
                next_attempt_at=at,
                created_at=at,
            )
        )
    if wanted:
        await notify_deliveries(session)
    return event


async def notify_deliveries(session: AsyncSession) -> None:
    """Wake every process's webhook dispatcher when this transaction commits (PostgreSQL)."""
    connection = await session.connection()
    if connection.dialect.name == "postgresql":
        await connection.execute(text("SELECT pg_notify(:c, '')"), {"c": WEBHOOK_CHANNEL})
