"""Live views hear of changes other processes make at once (PostgreSQL NOTIFY), not at their next poll.

Two API processes on one database: a case cancelled through one wakes a live view of it waiting in
the other, well inside the views' one-second poll. Each process ignores its own notifications (its
views were told in-process already).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from service.api.live import POLL_SECONDS
from service.persistence import writer
from service.sandbox.server import SandboxServer
from tests.stack import running_stack


async def test_a_change_made_in_another_process_wakes_live_views_at_once(
    database_url: str, sandbox: SandboxServer, is_postgres: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not is_postgres:
        pytest.skip("PostgreSQL only: on SQLite there is no NOTIFY and live views poll (one process writes)")
    async with (
        running_stack(database_url, sandbox, worker=False) as viewer,
        running_stack(database_url, sandbox, worker=False) as other,
    ):
        case = await other.open("rob@contoso.com")
        second = await other.open("ann@contoso.com")
        await asyncio.sleep(0.5)  # both processes are listening by now
        own_tag = writer.PROCESS_TAG
        # The two stacks share this test's process; the writer signs as another process would.
        monkeypatch.setattr(writer, "PROCESS_TAG", "another-process")
        woken = asyncio.create_task(viewer.runtime.events.wait(case["id"], 5))
        await asyncio.sleep(0)
        started = time.monotonic()
        cancelled = await other.client.post(f"/v1/cases/{case['id']}/cancel", json={"reason": "test"})
        assert cancelled.status_code == 200, cancelled.text
        assert await woken
        assert time.monotonic() - started < POLL_SECONDS / 2

        monkeypatch.setattr(writer, "PROCESS_TAG", own_tag)
        again = asyncio.create_task(viewer.runtime.events.wait(second["id"], 1))
        await asyncio.sleep(0)
        cancelled = await other.client.post(f"/v1/cases/{second['id']}/cancel", json={"reason": "test"})
        assert cancelled.status_code == 200, cancelled.text
        assert not await again  # a process's own notifications are not taken as another's
