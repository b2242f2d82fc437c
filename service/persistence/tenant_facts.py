"""The tenant's facts as workers last read them: accepted domains and the restricted list.

API processes never talk to the PowerShell endpoint: they validate intake against the stored
domain list and serve the restricted list from here, with the time it was read. Workers write
both (on start, on a schedule, when asked through ``senders_refresh_requested_at``), and the
check and unblock steps update the row of the address they touched. Everything is keyed by
tenant from the start; one tenant, ``default``, today.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from service.domain.tenant import Restriction
from service.logging import get_logger
from service.persistence.db import Database
from service.persistence.models import RestrictedSender, TenantFacts

log = get_logger(__name__)

DEFAULT_TENANT = "default"


@dataclass(frozen=True, slots=True)
class Facts:
    tenant: str
    accepted_domains: list[str] | None
    domains_refreshed_at: datetime | None
    senders_fetched_at: datetime | None
    senders_refresh_requested_at: datetime | None

    @property
    def refresh_pending(self) -> bool:
        requested, fetched = self.senders_refresh_requested_at, self.senders_fetched_at
        return requested is not None and (fetched is None or requested > fetched)


@dataclass(frozen=True, slots=True)
class SenderRow:
    sender_address: str
    reason: str
    blocked_at: datetime | None
    changed_at: datetime | None
    temporary_block: bool


def _facts(row: TenantFacts | None, tenant: str) -> Facts:
    if row is None:
        return Facts(tenant, None, None, None, None)
    return Facts(
        tenant=row.tenant,
        accepted_domains=list(row.accepted_domains) if row.accepted_domains is not None else None,
        domains_refreshed_at=row.domains_refreshed_at,
        senders_fetched_at=row.senders_fetched_at,
        senders_refresh_requested_at=row.senders_refresh_requested_at,
    )


async def load(db: Database, *, tenant: str = DEFAULT_TENANT) -> Facts:
    async with db.read() as session:
        return _facts(await session.get(TenantFacts, tenant), tenant)


_ENSURE = text("INSERT INTO tenant_facts (tenant) VALUES (:tenant) ON CONFLICT (tenant) DO NOTHING")


async def _row(session: AsyncSession, tenant: str) -> TenantFacts:
    """The tenant's row, created if missing, held for this transaction.

    Created with INSERT ... ON CONFLICT DO NOTHING, not read-then-add: a worker starting up reads
    the accepted domains in two places at once (its first case and its tenant reader), and on
    PostgreSQL both would insert the same row and one would fail.
    """
    connection = await session.connection()
    await connection.execute(_ENSURE, {"tenant": tenant})
    found = await session.get(TenantFacts, tenant, with_for_update=True)
    if found is None:  # pragma: no cover - inserted or present just above, in this transaction
        raise AssertionError(f"tenant_facts row {tenant} vanished")
    return found


async def store_domains(db: Database, *, domains: list[str], now: datetime, tenant: str = DEFAULT_TENANT) -> None:
    async with db.write() as session:
        row = await _row(session, tenant)
        row.accepted_domains = sorted({d.lower() for d in domains})
        row.domains_refreshed_at = now
        session.add(row)


async def request_senders_refresh(db: Database, *, now: datetime, tenant: str = DEFAULT_TENANT) -> None:
    """Ask whichever worker refreshes this tenant for a fresh read of the restricted list."""
    async with db.write() as session:
        row = await _row(session, tenant)
        row.senders_refresh_requested_at = now
        session.add(row)


async def mark_senders_fetched(session: AsyncSession, *, now: datetime, tenant: str) -> None:
    """Part of the transaction that stored a full listing."""
    row = await _row(session, tenant)
    row.senders_fetched_at = now
    session.add(row)


def apply_restriction(row: RestrictedSender, restriction: Restriction, now: datetime) -> None:
    row.reason = restriction.reason[:2000]
    row.blocked_at = restriction.blocked_at
    row.changed_at = restriction.changed_at
    row.temporary_block = restriction.temporary_block
    row.last_seen_at = now
    row.cleared_at = None


async def note_sender(
    db: Database,
    *,
    address: str,
    restriction: Restriction | None,
    now: datetime,
    case_id: str | None,
    tenant: str = DEFAULT_TENANT,
) -> None:
    """What a step just learned about one address: listed (with its fields) or not listed."""
    async with db.write() as session:
        await note_sender_in(session, address=address, restriction=restriction, now=now, case_id=case_id, tenant=tenant)


def sender_note(
    *,
    address: str,
    restriction: Restriction | None,
    now: datetime,
    case_id: str | None,
    tenant: str = DEFAULT_TENANT,
) -> Callable[[AsyncSession], Awaitable[None]]:
    """:func:`note_sender` to run inside another change's transaction (the writer's ``along``), never failing it.

    In a savepoint: if a full listing stored the same address at the same moment (the one
    conflict possible), only the note is undone; the listing has the address anyway.
    """

    async def note(session: AsyncSession) -> None:
        try:
            async with session.begin_nested():
                await note_sender_in(
                    session, address=address, restriction=restriction, now=now, case_id=case_id, tenant=tenant
                )
        except IntegrityError:
            log.info("sender_note_skipped", reason="stored by a full listing at the same moment")

    return note


async def note_sender_in(
    session: AsyncSession,
    *,
    address: str,
    restriction: Restriction | None,
    now: datetime,
    case_id: str | None,
    tenant: str = DEFAULT_TENANT,
) -> None:
    """:func:`note_sender` inside the caller's transaction (the worker's, recording the step)."""
    key = address.lower()
    row = await session.get(RestrictedSender, key)
    if restriction is None:
        if row is not None and row.cleared_at is None:
            row.cleared_at = now
            session.add(row)
        return
    if row is None:
        row = RestrictedSender(address=key, tenant=tenant, first_seen_at=now, last_seen_at=now, case_id=case_id)
    elif row.cleared_at is not None:
        row.first_seen_at = now
        row.case_id = case_id
    apply_restriction(row, restriction, now)
    session.add(row)
    await session.flush()


async def senders(db: Database, *, tenant: str = DEFAULT_TENANT) -> tuple[list[SenderRow], datetime | None]:
    """The restricted list as last read, and when."""
    async with db.read() as session:
        rows = (
            await session.exec(
                select(RestrictedSender)
                .where(RestrictedSender.tenant == tenant, col(RestrictedSender.cleared_at).is_(None))
                .order_by(col(RestrictedSender.blocked_at), col(RestrictedSender.address))
            )
        ).all()
        facts = _facts(await session.get(TenantFacts, tenant), tenant)
    items = [
        SenderRow(
            sender_address=r.address,
            reason=r.reason,
            blocked_at=r.blocked_at,
            changed_at=r.changed_at,
            temporary_block=r.temporary_block,
        )
        for r in rows
    ]
    return items, facts.senders_fetched_at
