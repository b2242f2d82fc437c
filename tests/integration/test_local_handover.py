"""A case created in a process that runs a worker starts at once, held by that worker.

Intake reserves room in the local worker, creates the case already leased to it with its first
step started (the reset's password sealed) in the same transaction, and hands it over; the worker
does not wait to be woken, claim it or start it in transactions of its own. A worker that is full,
or an API-only process, leaves the case to the claim (the other workers' path). A create that fails
or replays gives the room back. A process that dies after the create leaves a started step, which
the next worker starts again with the password sealed at intake.
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import timedelta

import pytest

from service.domain.plan import Actions
from service.domain.tenancy import TenantDomains
from service.logging import configure as configure_logging
from service.persistence import cases, snapshots
from service.persistence.db import Database
from service.persistence.records import Lease
from service.persistence.writer import NewCase
from service.runtime import utc_now
from service.sandbox.server import SandboxServer
from service.worker.engine import Engine
from service.worker.runner import Worker
from tests.stack import running_stack


def _new_case(mailbox: str, *, tenant: str | None = None) -> NewCase:
    """A case as a plain request asks for it: every action, no ticket, no approval."""
    return NewCase(
        mailbox=mailbox,
        ticket_ref=None,
        requested_by=None,
        note=None,
        actions=Actions(),
        require_approval=False,
        tenant=tenant,
    )


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
        # The create's own transaction started the reset: the answer is the case as it committed.
        assert case["state"] == "securing_account"
        first = case["steps"][0]
        assert (first["name"], first["status"], first["attempts"]) == ("reset_password", "running", 1)
        done = await stack.wait_for(case["id"])
        assert done["outcome"] == "unblocked"
        events = await stack.events(case["id"])
        assert [e["type"] for e in events[:2]] == ["case.created", "state.changed"]
        assert events[0]["at"] == events[1]["at"]  # one transaction
        assert done["steps"][0]["attempts"] == 1
        assert len(stack.calls("Update-MgUser")) == 1
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
        while (reservation := worker.reserve(now)) is not None:
            held.append(reservation)
        assert len(held) == worker.concurrency
        case = await stack.open("rob@contoso.com")
        row = await snapshots.get_case(stack.runtime.db, case_id=case["id"])
        assert row.lease_owner is None  # nobody holds it: the worker had no room
        assert case["id"] not in worker._inflight
        for reservation in held:
            worker.unreserve(reservation)
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
        new = _new_case("rob@contoso.com")
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


async def test_a_reset_started_by_a_create_whose_process_died_is_sent_by_the_next_worker(
    database_url: str, sandbox: SandboxServer
) -> None:
    """The create committed the reset's start and its sealed password, then the process died before
    sending it. Once that lease runs out a worker claims the case and runs the reset again (attempt 2)
    with the password sealed at intake, and nothing else: one Update-MgUser, then the usual case."""
    async with running_stack(database_url, sandbox) as stack:
        runtime = stack.runtime
        long_ago = utc_now() - timedelta(seconds=3 * runtime.settings.worker_lease)
        gone = Engine(runtime, worker_id="gone:1:dead")
        opening = gone.opening(Lease(owner=gone.worker_id, until=long_ago), long_ago)
        stored = await cases.create_case(
            runtime.db,
            new=_new_case("rob@contoso.com", tenant="default"),
            actor="test",
            now=long_ago,
            render=lambda case: ({"id": case.id}, f"/v1/cases/{case.id}"),
            lease=opening.lease,
            then=opening.start,
        )
        assert stored.claimed is not None
        started = stored.claimed.case
        assert (started.state, started.lease_owner) == ("securing_account", "gone:1:dead")
        assert opening.password is not None
        runtime.work.notify()  # its lease ran out long ago: due for anyone
        done = await stack.wait_for(started.id)
        assert done["outcome"] == "unblocked"
        assert done["steps"][0]["attempts"] == 2
        resets = stack.calls("Update-MgUser")
        assert len(resets) == 1
        sent = resets[0]["parameters"]["PasswordProfile"]["Password"]["sha256"]
        assert sent == hashlib.sha256(opening.password.encode()).hexdigest()


async def test_a_mailbox_intake_cannot_check_is_left_to_the_worker(database_url: str, sandbox: SandboxServer) -> None:
    """While intake does not know the tenant's accepted domains (the only tenant, not read yet), it
    starts nothing itself: the case comes back `received`, and the worker checks the domain before
    anything is sealed or sent. A foreign mailbox then fails with no password ever stored."""
    async with running_stack(database_url, sandbox) as stack:
        unknown = (TenantDomains("default", True, None),)
        stack.runtime.tenant_cache = (time.monotonic() + 3600, unknown)  # what intake knows: nothing yet
        case = await stack.open("rob@contoso.com")
        assert (case["state"], case["version"]) == ("received", 1)
        assert (await stack.wait_for(case["id"]))["outcome"] == "unblocked"

        foreign = await stack.open("eve@fabrikam.example")
        assert foreign["state"] == "received"
        done = await stack.wait_for(foreign["id"])
        assert (done["state"], done["last_error"]["code"]) == ("failed", "foreign_mailbox")
        assert done["credential"] is None
        assert not [c for c in stack.calls("Update-MgUser") if "eve@" in json.dumps(c["parameters"])]
