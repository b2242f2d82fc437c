"""The tenant's facts row is made by whichever writer comes first, however many come at once.

A worker starting up reads the accepted domains in two places at the same moment (its first
case and its tenant reader), and an API process may ask for a fresh listing then too: each
writes the tenant's row. On PostgreSQL, read-then-insert let one of them fail on the primary key,
and when the loser was the tenant reader it stopped for good (found in CI: the restricted list was
never read).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from service.persistence import tenant_facts
from service.persistence.db import Database
from service.persistence.types import utcnow


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    try:
        yield database
    finally:
        await database.dispose()


async def test_writers_racing_to_create_the_row_all_land(db: Database) -> None:
    now = utcnow()
    for round_ in range(5):
        tenant = f"race-{round_}"
        await asyncio.gather(
            *(
                tenant_facts.store_domains(db, domains=["contoso.com", f"d{i}.example"], now=now, tenant=tenant)
                for i in range(6)
            ),
            tenant_facts.request_senders_refresh(db, now=now, tenant=tenant),
        )
        facts = await tenant_facts.load(db, tenant=tenant)
        assert facts.accepted_domains is not None
        assert "contoso.com" in facts.accepted_domains
        assert facts.senders_refresh_requested_at is not None
