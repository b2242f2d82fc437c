"""The outbox: events written in the same transaction as the change they report.

Each event is fanned out at once to the subscriptions that want it, as one delivery row per
subscription, still inside that transaction. So an event exists exactly when its change was
committed: none is lost if the process dies after the commit, and none is sent for a change
that rolled back. Delivery happens later, from these rows (:mod:`service.notifications`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import insert, select, text
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

from service.domain.tenancy import visible
from service.persistence.models import OutboxEvent, WebhookDelivery, WebhookSubscription

WEBHOOK_CHANNEL = "unblock_webhooks"
_EVENTS = SQLModel.metadata.tables[str(OutboxEvent.__tablename__)]
_DELIVERIES = SQLModel.metadata.tables[str(WebhookDelivery.__tablename__)]
_SUBSCRIPTIONS = SQLModel.metadata.tables[str(WebhookSubscription.__tablename__)]
_LIVE_SUBSCRIPTIONS = select(_SUBSCRIPTIONS.c.id, _SUBSCRIPTIONS.c.events, _SUBSCRIPTIONS.c.tenants).where(
    _SUBSCRIPTIONS.c.deleted_at.is_(None)
)

_INSERT_EVENT = insert(_EVENTS).returning(_EVENTS.c.id)
# Keys in a session's ``info``: what this transaction already read or sent (see _subscriptions).
_SUBSCRIPTIONS_READ = "outbox.subscriptions"
_DISPATCHERS_WOKEN = "outbox.dispatchers_woken"


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
) -> int:
    """Store an event and a delivery for each subscription that wants its type and may see its tenant;
    the event's id.

    A subscription limited to tenants (made with a key limited to them) gets only their events;
    an event of no tenant yet (a case intake could not place) goes only to unlimited ones.
    Core statements, not ORM objects: this runs in most of the writer's transactions.
    """
    connection = await session.connection()
    payload = {"type": type, "timestamp": timestamp(at), "data": data}
    row = {"type": type, "case_id": case_id, "occurred_at": at, "payload": payload}
    event_id = int((await connection.execute(_INSERT_EVENT, row)).scalar_one())
    wanted = [
        s.id
        for s in await _subscriptions(session)
        if (type in s.events or "*" in s.events) and visible(tenant, s.tenants)
    ]
    if wanted:
        await connection.execute(
            insert(_DELIVERIES),
            [
                {
                    "subscription_id": subscription_id,
                    "event_id": event_id,
                    "ordering_key": ordering_key,
                    "status": "pending",
                    "attempts": 0,
                    "next_attempt_at": at,
                    "created_at": at,
                }
                for subscription_id in wanted
            ],
        )
        await notify_deliveries(session)
    return event_id


async def _subscriptions(session: AsyncSession) -> Sequence[Any]:
    """The live subscriptions, read once per transaction: a change that reports two events (a case
    resolved: its state changed, and it was resolved) fans both out to the same list."""
    transaction = session.sync_session.get_transaction()
    cached = session.info.get(_SUBSCRIPTIONS_READ)
    if cached is not None and cached[0] is transaction:
        return cast("Sequence[Any]", cached[1])
    connection = await session.connection()
    subscriptions = (await connection.execute(_LIVE_SUBSCRIPTIONS)).all()
    session.info[_SUBSCRIPTIONS_READ] = (transaction, subscriptions)
    return subscriptions


async def notify_deliveries(session: AsyncSession) -> None:
    """Wake every process's webhook dispatcher when this transaction commits (PostgreSQL); once a
    transaction however many deliveries it adds (PostgreSQL folds equal notifications anyway)."""
    connection = await session.connection()
    if connection.dialect.name != "postgresql":
        return
    transaction = session.sync_session.get_transaction()
    if session.info.get(_DISPATCHERS_WOKEN) is transaction:
        return
    await connection.execute(text("SELECT pg_notify(:c, '')"), {"c": WEBHOOK_CHANNEL})
    session.info[_DISPATCHERS_WOKEN] = transaction
