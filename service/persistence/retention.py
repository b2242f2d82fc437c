"""Retention: closed cases, and the records that only exist for them, are deleted after a while.

A case names a person's mailbox and what happened to their account, so it is personal data and
should not be kept for ever. Open cases are never touched. The audit log is not purged: it is the
append-only, hash-chained evidence of who did what (it holds no passwords), and each purge adds
a record to it saying how much was deleted and up to when. Work is done in batches, each one
transaction with its audit record, so a large purge neither holds locks for long nor leaves a
half-deleted case behind if it is interrupted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, exists, func, or_
from sqlmodel import col, delete, select, update
from sqlmodel.sql.expression import SelectOfScalar

from service.domain.audit import Actor, AuditSigner
from service.persistence import audit
from service.persistence.db import Database
from service.persistence.models import (
    Case,
    CaseEvent,
    CaseStep,
    Credential,
    IdempotencyRecord,
    OutboxEvent,
    RestrictedSender,
    WebhookDelivery,
)
from service.persistence.webhooks import DeliveryStatus


@dataclass(frozen=True)
class PurgeReport:
    cases: int = 0
    outbox_events: int = 0
    idempotency_records: int = 0
    restricted_senders: int = 0

    def __add__(self, other: PurgeReport) -> PurgeReport:
        return PurgeReport(
            self.cases + other.cases,
            self.outbox_events + other.outbox_events,
            self.idempotency_records + other.idempotency_records,
            self.restricted_senders + other.restricted_senders,
        )

    @property
    def total(self) -> int:
        return self.cases + self.outbox_events + self.idempotency_records + self.restricted_senders


def _closed_before(cutoff: datetime) -> ColumnElement[bool]:
    return and_(col(Case.is_open).is_(False), col(Case.finished_at) < cutoff)


def _undelivered() -> ColumnElement[bool]:
    """An event still owed to a webhook receiver is kept until it is delivered or given up."""
    return exists().where(
        and_(
            col(WebhookDelivery.event_id) == col(OutboxEvent.id), col(WebhookDelivery.status) == DeliveryStatus.pending
        )
    )


def _purgeable_event(cutoff: datetime) -> ColumnElement[bool]:
    """Older than the cutoff, not about a case that is still open, and owed to no receiver."""
    return and_(
        col(OutboxEvent.occurred_at) < cutoff,
        or_(col(OutboxEvent.case_id).is_(None), col(OutboxEvent.case_id).not_in(_open_ids())),
        ~_undelivered(),
    )


async def count(db: Database, *, cutoff: datetime) -> PurgeReport:
    """What a purge with this cutoff would delete (``--dry-run``)."""
    async with db.read() as session:
        cases = (await session.exec(select(func.count()).select_from(Case).where(_closed_before(cutoff)))).one()
        events = (
            await session.exec(select(func.count()).select_from(OutboxEvent).where(_purgeable_event(cutoff)))
        ).one()
        keys = (
            await session.exec(
                select(func.count()).select_from(IdempotencyRecord).where(col(IdempotencyRecord.created_at) < cutoff)
            )
        ).one()
        senders = (
            await session.exec(
                select(func.count()).select_from(RestrictedSender).where(col(RestrictedSender.cleared_at) < cutoff)
            )
        ).one()
    return PurgeReport(int(cases), int(events), int(keys), int(senders))


async def purge(
    db: Database, *, cutoff: datetime, now: datetime, actor: Actor, signer: AuditSigner, batch_size: int = 500
) -> PurgeReport:
    """Delete, batch by batch, what closed before ``cutoff``; returns what was deleted."""
    report = PurgeReport()
    while True:
        done = await _purge_batch(db, cutoff=cutoff, now=now, actor=actor, signer=signer, batch_size=batch_size)
        report += done
        if done.total == 0:
            return report


async def _purge_batch(
    db: Database, *, cutoff: datetime, now: datetime, actor: Actor, signer: AuditSigner, batch_size: int
) -> PurgeReport:
    async with db.write() as session:
        case_ids = list(
            (
                await session.exec(
                    select(Case.id).where(_closed_before(cutoff)).order_by(col(Case.finished_at)).limit(batch_size)
                )
            ).all()
        )
        if case_ids:
            # children first: SQLite only cascades with foreign_keys on, and this does not depend on it
            for child in (CaseStep, CaseEvent, Credential):
                await session.exec(delete(child).where(col(child.case_id).in_(case_ids)))
            await session.exec(delete(Case).where(col(Case.id).in_(case_ids)))
            # discovery keeps its memory of the sender (or it would report it again); only the link goes
            await session.exec(
                update(RestrictedSender).where(col(RestrictedSender.case_id).in_(case_ids)).values(case_id=None)
            )
        event_ids = list(
            (await session.exec(select(OutboxEvent.id).where(_purgeable_event(cutoff)).limit(batch_size))).all()
        )
        if event_ids:
            await session.exec(delete(WebhookDelivery).where(col(WebhookDelivery.event_id).in_(event_ids)))
            await session.exec(delete(OutboxEvent).where(col(OutboxEvent.id).in_(event_ids)))
        keys = await session.exec(
            delete(IdempotencyRecord).where(
                col(IdempotencyRecord.id).in_(
                    select(IdempotencyRecord.id).where(col(IdempotencyRecord.created_at) < cutoff).limit(batch_size)
                )
            )
        )
        senders = await session.exec(
            delete(RestrictedSender).where(
                col(RestrictedSender.address).in_(
                    select(RestrictedSender.address).where(col(RestrictedSender.cleared_at) < cutoff).limit(batch_size)
                )
            )
        )
        done = PurgeReport(len(case_ids), len(event_ids), int(keys.rowcount or 0), int(senders.rowcount or 0))
        if done.total:
            await audit.append(
                session,
                signer=signer,
                at=now,
                actor=actor,
                action="retention.purged",
                target=None,
                detail={"cutoff": cutoff.isoformat(), **asdict(done)},
            )
        return done


def _open_ids() -> SelectOfScalar[str]:
    return select(Case.id).where(col(Case.is_open).is_(True))
