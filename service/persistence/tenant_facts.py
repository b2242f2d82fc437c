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

from sqlalchemy import bindparam, text
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from service.domain.tenant import Restriction
from service.logging import get_logger
from service.persistence.db import Database
from service.persistence.models import RestrictedSender, TenantFacts
from service.persistence.types import UTCDateTime

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
    """:func:`note_sender` to run inside another change's transaction (the writer's ``along``).

    It cannot fail the change on a conflict: a full listing storing the same address at the same
    moment (the one conflict possible) meets the note's upsert, and the later write wins.
    """

    async def note(session: AsyncSession) -> None:
        await note_sender_in(session, address=address, restriction=restriction, now=now, case_id=case_id, tenant=tenant)

    return note


# One statement each, not read-then-write: the check, unblock and verify steps write the note in
# the transaction that records their result, where every round trip delays the case's next command.
# An address listed again after it was cleared starts a new sighting (first_seen_at, case_id);
# SET expressions read the row as it was before this statement.
_NOTE_LISTED = text(
    """
    INSERT INTO restricted_senders
        (address, tenant, reason, blocked_at, changed_at, temporary_block, first_seen_at, last_seen_at, case_id)
    VALUES (:address, :tenant, :reason, :blocked_at, :changed_at, :temporary_block, :now, :now, :case_id)
    ON CONFLICT (address) DO UPDATE SET
        reason = excluded.reason,
        blocked_at = excluded.blocked_at,
        changed_at = excluded.changed_at,
        temporary_block = excluded.temporary_block,
        last_seen_at = excluded.last_seen_at,
        first_seen_at = CASE WHEN restricted_senders.cleared_at IS NULL
                             THEN restricted_senders.first_seen_at ELSE excluded.first_seen_at END,
        case_id = CASE WHEN restricted_senders.cleared_at IS NULL
                       THEN restricted_senders.case_id ELSE excluded.case_id END,
        cleared_at = NULL
    """
).bindparams(
    bindparam("now", type_=UTCDateTime()),
    bindparam("blocked_at", type_=UTCDateTime()),
    bindparam("changed_at", type_=UTCDateTime()),
)
_NOTE_CLEARED = text(
    "UPDATE restricted_senders SET cleared_at = :now WHERE address = :address AND cleared_at IS NULL"
).bindparams(bindparam("now", type_=UTCDateTime()))


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
    connection = await session.connection()
    key = address.lower()
    if restriction is None:
        await connection.execute(_NOTE_CLEARED, {"address": key, "now": now})
        return
    await connection.execute(
        _NOTE_LISTED,
        {
            "address": key,
            "tenant": tenant,
            "reason": restriction.reason[:2000],
            "blocked_at": restriction.blocked_at,
            "changed_at": restriction.changed_at,
            "temporary_block": restriction.temporary_block,
            "now": now,
            "case_id": case_id,
        },
    )


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
