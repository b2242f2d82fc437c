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

from service.persistence.models import OutboxEvent, WebhookDelivery, WebhookSubscription
from service.persistence.records import CaseSnapshot, case_document

WEBHOOK_CHANNEL = "unblock_webhooks"
TERMINAL_EVENTS = {"resolved": "case.resolved", "failed": "case.failed", "escalated": "case.escalated"}
EVENT_TYPES = (
    "case.created",
    "case.state_changed",
    "case.resolved",
    "case.failed",
    "case.escalated",
    "credential.revealed",
    "sender.restricted",
)


def _ts(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


async def emit(
    session: AsyncSession, *, type: str, at: datetime, data: dict[str, Any], case_id: str | None, ordering_key: str
) -> OutboxEvent:
    event = OutboxEvent(
        type=type, case_id=case_id, occurred_at=at, payload={"type": type, "timestamp": _ts(at), "data": data}
    )
    session.add(event)
    await session.flush()
    subscriptions = (
        await session.exec(select(WebhookSubscription).where(col(WebhookSubscription.deleted_at).is_(None)))
    ).all()
    wanted = [s for s in subscriptions if type in s.events or "*" in s.events]
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


async def case_events(session: AsyncSession, *, case: CaseSnapshot, at: datetime, previous_state: str | None) -> None:
    """case.created, or case.state_changed (+ case.resolved/failed/escalated when it ends)."""
    document = case_document(case)
    key = f"case:{case.id}"
    if previous_state is None:
        await emit(session, type="case.created", at=at, data={"case": document}, case_id=case.id, ordering_key=key)
        return
    await emit(
        session,
        type="case.state_changed",
        at=at,
        data={"case": document, "previous_state": previous_state},
        case_id=case.id,
        ordering_key=key,
    )
    if case.state in TERMINAL_EVENTS:
        await emit(
            session, type=TERMINAL_EVENTS[case.state], at=at, data={"case": document}, case_id=case.id, ordering_key=key
        )
