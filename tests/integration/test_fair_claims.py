"""Tenants take turns at the claim: one tenant's burst does not queue another tenant's case behind it.

On the real database (SQLite or PostgreSQL): a burst of cases for one tenant, then a single case for
another, all due; a worker with room for two claims one of each.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from service.api.operations import location
from service.domain.findings import Containment
from service.domain.plan import RequestedActions
from service.persistence import cases
from service.persistence.db import Database
from service.persistence.types import utcnow
from service.persistence.writer import NewCase


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    try:
        yield database
    finally:
        await database.dispose()


async def _open(db: Database, mailbox: str, tenant: str | None, minutes_ago: int) -> str:
    stored = await cases.create_case(
        db,
        new=NewCase(mailbox, None, None, None, RequestedActions().resolve(Containment.enforce), False, tenant=tenant),
        actor="test",
        now=utcnow() - timedelta(minutes=minutes_ago),
        render=lambda c: ({"id": c.id}, location(c.id)),
    )
    return str(stored.body["id"])


async def test_a_burst_for_one_tenant_does_not_queue_anothers_case(db: Database) -> None:
    burst = [await _open(db, f"user{i}@contoso.com", "contoso", minutes_ago=60 - i) for i in range(12)]
    single = await _open(db, "mia@fabrikam.com", "fabrikam", minutes_ago=1)  # the newest of all
    undecided = await _open(db, "x@northwind.example", None, minutes_ago=2)  # intake could not place it

    first = await cases.claim_due(db, worker_id="w1", now=utcnow(), lease=60, limit=3)
    claimed = {c.case_id for c in first}
    assert single in claimed
    assert undecided in claimed
    assert burst[0] in claimed  # the oldest of the burst: each tenant's own order is kept

    following = await cases.claim_due(db, worker_id="w2", now=utcnow(), lease=60, limit=1)
    assert [c.case_id for c in following] == [burst[1]]  # then the burst, oldest first
    rest = await cases.claim_due(db, worker_id="w2", now=utcnow(), lease=60, limit=50)
    assert {c.case_id for c in rest} == set(burst[2:])
    assert await cases.claim_due(db, worker_id="w3", now=utcnow(), lease=60, limit=50) == []
