"""What discovery saw: newly restricted senders reported once (and optionally a case opened), all in one transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlmodel import col, select

from service.domain.plan import Actions
from service.domain.tenant import Restriction
from service.persistence import outbox
from service.persistence.db import Database
from service.persistence.models import Case, RestrictedSender
from service.persistence.tenant_facts import DEFAULT_TENANT, apply_restriction, mark_senders_fetched
from service.persistence.writer import NewCase, insert_case


@dataclass(frozen=True, slots=True)
class Sighting:
    address: str
    reported: bool
    case_id: str | None


def _sender(restriction: Restriction) -> dict[str, object]:
    blocked = restriction.blocked_at.isoformat().replace("+00:00", "Z") if restriction.blocked_at else None
    changed = restriction.changed_at.isoformat().replace("+00:00", "Z") if restriction.changed_at else None
    return {
        "sender_address": restriction.sender_address,
        "reason": restriction.reason,
        "blocked_at": blocked,
        "changed_at": changed,
        "temporary_block": restriction.temporary_block,
    }


async def record_listing(
    db: Database,
    *,
    listed: list[Restriction],
    valid: set[str],
    now: datetime,
    auto_remediate: bool,
    require_approval: bool,
    actions: Actions,
    actor: str = "discovery",
    report: bool = True,
    tenant: str = DEFAULT_TENANT,
) -> list[Sighting]:
    """Store the full listing as the tenant's restricted list (and when it was read); with ``report``
    (discovery is on), report the new senders (sender.restricted) unless a case already covers them.

    ``valid`` are the addresses the service may act on (plain addresses in its domains); others
    are still reported, but never get a case opened automatically.
    """
    sightings: list[Sighting] = []
    async with db.write() as session:
        known = {
            r.address: r
            for r in (await session.exec(select(RestrictedSender).where(RestrictedSender.tenant == tenant))).all()
        }
        seen: set[str] = set()
        for restriction in listed:
            address = restriction.sender_address.lower()
            seen.add(address)
            row = known.get(address)
            if row is None or row.cleared_at is not None:  # a new restriction (or one again after a clear)
                row = row or RestrictedSender(address=address, tenant=tenant, first_seen_at=now, last_seen_at=now)
                row.first_seen_at = now
                row.reported_at = None
                row.case_id = None
            apply_restriction(row, restriction, now)
            # Reported once: not yet reported, and no case took it on (a case's lookup notes its case).
            if not report or row.reported_at is not None or row.case_id is not None:
                session.add(row)
                continue
            open_case = (await session.exec(select(Case.id).where(Case.mailbox == address, col(Case.is_open)))).first()
            row.case_id = open_case
            if open_case is None:
                await outbox.emit(
                    session,
                    type="sender.restricted",
                    at=now,
                    data={"sender": _sender(restriction), "tenant": tenant},
                    case_id=None,
                    ordering_key=f"sender:{address}",
                    tenant=tenant,
                )
                row.reported_at = now
                if auto_remediate and address in valid:
                    case = await insert_case(
                        session,
                        new=NewCase(
                            address,
                            None,
                            "discovery",
                            "opened automatically by discovery",
                            actions,
                            require_approval,
                            created_by_kind="service",
                            created_by_id="discovery",
                            tenant=tenant,
                        ),
                        actor=actor,
                        now=now,
                    )
                    row.case_id = case.id
            session.add(row)
            sightings.append(Sighting(address=address, reported=row.reported_at is not None, case_id=row.case_id))
        for address, row in known.items():
            if address not in seen and row.cleared_at is None:
                row.cleared_at = now
                session.add(row)
        await mark_senders_fetched(session, now=now, tenant=tenant)
    return sightings
