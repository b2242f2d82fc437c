"""A case created in a process that runs a worker starts at once, held by that worker.

Intake reserves room in the local worker, creates the case already leased to it and hands it over;
the worker does not wait to be woken nor claim it in a transaction of its own. A worker that is
full, or an API-only process, leaves the case to the claim (the other workers' path). A create that
fails or replays gives the room back.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from service.domain.plan import Actions
from service.logging import configure as configure_logging
from service.persistence import cases, snapshots
from service.persistence.db import Database
from service.persistence.records import Lease
from service.persistence.writer import NewCase
from service.runtime import utc_now
from service.sandbox.server import SandboxServer
from service.worker.runner import Worker
from tests.stack import running_stack


def _worker(local: object) -> Worker:
    assert isinstance(local, Worker)
    return local


async def test_a_case_created_beside_a_free_worker_is_handed_to_it(
    database_url: str, sandbox: SandboxServer, capfd: pytest.CaptureFixture[str]
) -> None:
    configure_logging("json", "info")  # as `unblock serve` does: JSON lines on stderr
    async with running_stack(database_url, sandbox) as stack:
        worker = _worker(stack.runtime.local_worker)
        case = await stack.open("rob@contoso.com")
        assert case["id"] in worker._inflight  # running already: handed over, not claimed later
        assert worker._reserved == 0
        done = await stack.wait_for(case["id"])
        assert done["outcome"] == "unblocked"
        # The worker's lines about the case are its own, not labelled with the creating request's id.
        lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")]
        steps = [line for line in lines if line.get("event") == "step_started"]
        assert steps
        assert all(line.get("case_id") == case["id"] and "request_id" not in line for line in steps), steps

        # The reset takes a while now, so ann's case is surely still open when the duplicate arrives
        # (her mailbox is clean and not restricted: at the sandbox's speed her case ends in a blink).
        stack.sandbox.tenant.configure({"latency_ms": {"Update-MgUser": 500}})
        again = await stack.client.post("/v1/cases", json={"mailbox": "ann@contoso.com"})
        duplicate = await stack.client.post("/v1/cases", json={"mailbox": "ann@contoso.com"})
        assert again.status_code == 201
        assert duplicate.status_code == 409
        assert worker._reserved == 0  # the failed create gave its room back
        replayed = [
            await stack.client.post("/v1/cases", json={"mailbox": "eve@contoso.com"}, headers={"Idempotency-Key": "k1"})
            for _ in range(2)
        ]
        assert [r.status_code for r in replayed] == [201, 201]
        assert worker._reserved == 0  # so did the replay, which created nothing
        for opened in (again.json(), replayed[0].json()):
            assert (await stack.wait_for(opened["id"]))["state"] in {"resolved", "escalated", "failed"}


async def test_a_full_worker_leaves_the_case_to_the_claim(database_url: str, sandbox: SandboxServer) -> None:
    async with running_stack(database_url, sandbox) as stack:
        worker = _worker(stack.runtime.local_worker)
        now = utc_now()
        held = []
        while (lease := worker.reserve(now)) is not None:
            held.append(lease)
        assert len(held) == worker.concurrency
        case = await stack.open("rob@contoso.com")
        row = await snapshots.get_case(stack.runtime.db, case_id=case["id"])
        assert row.lease_owner is None  # nobody holds it: the worker had no room
        assert case["id"] not in worker._inflight
        for _ in held:
            worker.unreserve()
        stack.runtime.work.notify()
        assert (await stack.wait_for(case["id"]))["outcome"] == "unblocked"  # claimed once there was room


async def test_an_api_only_process_creates_cases_for_any_worker(database_url: str, sandbox: SandboxServer) -> None:
    async with running_stack(database_url, sandbox, worker=False) as api:
        assert api.runtime.local_worker is None
        case = await api.open("rob@contoso.com")
        row = await snapshots.get_case(api.runtime.db, case_id=case["id"])
        assert row.lease_owner is None


async def test_a_case_created_with_a_lease_is_not_claimable_by_others(database_url: str) -> None:
    db = Database(database_url)
    try:
        now = utc_now()
        new = NewCase(
            mailbox="rob@contoso.com",
            ticket_ref=None,
            requested_by=None,
            note=None,
            actions=Actions(),
            require_approval=False,
        )
        stored = await cases.create_case(
            db,
            new=new,
            actor="test",
            now=now,
            render=lambda case: ({"id": case.id}, f"/v1/cases/{case.id}"),
            lease=Lease(owner="w1", until=now + timedelta(seconds=60)),
        )
        assert stored.claimed is not None
        assert stored.claimed.case.lease_owner == "w1"
        assert stored.claimed.case.lease_expires_at == now + timedelta(seconds=60)
        assert await cases.claim_due(db, worker_id="w2", now=now, lease=60, limit=10) == []
        later = now + timedelta(seconds=61)  # the lease ran out (the process died): anyone may take it
        claimed = await cases.claim_due(db, worker_id="w2", now=later, lease=60, limit=10)
        assert [c.case_id for c in claimed] == [stored.claimed.case_id]
    finally:
        await db.dispose()
