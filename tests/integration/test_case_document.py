"""The stored case document: written with every change, served as is, never older than the rows.

After cases run to their end (a reset, an unblock, a reveal, a cancel), every case's stored
document is byte for byte what rendering its rows gives; GET and the list page serve exactly
those bytes; a case written before documents were stored (document NULL) is rendered instead.
"""

from __future__ import annotations

import json

from sqlalchemy import func, select, update

from service.persistence import snapshots
from service.persistence.records import case_document, render_document
from service.persistence.snapshots import CASES
from service.sandbox.server import SandboxServer
from tests.stack import Stack, running_stack


async def _all_consistent(stack: Stack) -> list[str]:
    """Every case's stored document compared with its rows; the ids of any that differ."""
    pages, _ = await snapshots.list_cases(stack.runtime.db, limit=200)
    wrong = []
    for case in pages:
        _, stored = await snapshots.get_document(stack.runtime.db, case_id=case.id)
        if stored != render_document(case_document(case)):
            wrong.append(case.id)
    return wrong


async def test_the_stored_document_follows_every_change(database_url: str, sandbox: SandboxServer) -> None:
    async with running_stack(database_url, sandbox) as stack:
        rob = await stack.open("rob@contoso.com")
        ann = await stack.open("ann@contoso.com")
        await stack.wait_for(rob["id"])
        await stack.wait_for(ann["id"])
        revealed = await stack.client.post(f"/v1/cases/{rob['id']}/credential/reveal")
        assert revealed.status_code == 200
        assert await _all_consistent(stack) == []
        async with stack.runtime.db.connect_read() as connection:
            unstored = (await connection.execute(select(func.count()).where(CASES.c.document.is_(None)))).scalar()
        assert unstored == 0  # every case's document was stored by the writer, none rendered on the spot

        got = await stack.client.get(f"/v1/cases/{rob['id']}")
        assert got.json()["credential"]["revealed_at"] is not None  # the reveal re-rendered it
        page = await stack.client.get("/v1/cases", params={"limit": 1})
        assert page.status_code == 200
        body = page.json()
        assert body["items"] == [(await stack.client.get(f"/v1/cases/{ann['id']}")).json()]  # newest first
        assert body["next_cursor"]
        second = (await stack.client.get("/v1/cases", params={"limit": 1, "cursor": body["next_cursor"]})).json()
        assert [c["id"] for c in second["items"]] == [rob["id"]]
        assert second["next_cursor"] is None


async def test_a_case_written_before_documents_were_stored_is_rendered(
    database_url: str, sandbox: SandboxServer
) -> None:
    async with running_stack(database_url, sandbox, worker=False, allowed_domains=["contoso.com"]) as stack:
        case = await stack.open("rob@contoso.com")
        before = await stack.client.get(f"/v1/cases/{case['id']}")
        async with stack.runtime.db.write() as session:
            await session.exec(update(CASES).values(document=None))  # as migration 0010 leaves old cases
        after = await stack.client.get(f"/v1/cases/{case['id']}")
        assert after.content == before.content
        assert after.headers["etag"] == before.headers["etag"]
        listed = await stack.client.get("/v1/cases")
        assert json.loads(listed.content)["items"] == [before.json()]
        cancelled = await stack.client.post(f"/v1/cases/{case['id']}/cancel")  # the next change stores it
        assert cancelled.status_code == 200
        assert await _all_consistent(stack) == []
