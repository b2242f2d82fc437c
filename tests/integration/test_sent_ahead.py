"""A step is sent while the write that starts it is still being made.

The worker records a step's result and starts the next step in one transaction. When that next
step only reads the tenant (the investigation, the check, the verification), its commands go out
as soon as the decision is made, so the tenant works while the database commits. When it makes a
change that is the same however often it is made (the sign-out, the containment), it goes out once
the write holds the case's row. These tests hold the database back at those moments (a lock the
write must wait for) and look at the tenant: the reads arrived while the write waited, each was
sent once; the sign-out went out only once the write held the row and before it committed; the
reset's and the unblock's commands never went ahead of their writes; a cancel stops what the
write it beat would have sent.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.pool import NullPool

from service.errors import Unavailable
from service.persistence import writer
from service.persistence.db import sync_url
from service.sandbox.server import SandboxServer
from service.worker import engine as engine_module
from tests.helpers import until
from tests.stack import Stack, running_stack

#: Each read of the investigation, and how many commands of it a clean mailbox's case sends.
_INVESTIGATION = {
    "Get-MgUser": 1,
    "Get-InboxRule": 2,
    "Get-Mailbox": 1,
    "Get-MailboxPermission": 1,
    "Get-RecipientPermission": 1,
    "Get-MgUserAuthenticationMethod": 1,
    "Get-MgOauth2PermissionGrant": 1,
}


@asynccontextmanager
async def _held(database_url: str, take: Callable[[Connection], object]) -> AsyncIterator[None]:
    """Hold a lock (``take`` runs on a connection of its own) until the block ends, from a thread of
    its own: the service runs on this event loop, which must go on while the lock is taken and held."""
    engine = create_engine(sync_url(database_url), poolclass=NullPool)
    taken, release = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    def hold() -> None:
        try:
            with engine.connect() as connection:
                take(connection)
                taken.set()
                release.wait(30)
                if connection.dialect.name == "postgresql":
                    connection.rollback()
                else:
                    connection.exec_driver_sql("ROLLBACK")
        except BaseException as error:
            failure.append(error)
            taken.set()

    holder = threading.Thread(target=hold, name="lock-holder")
    holder.start()
    await asyncio.to_thread(taken.wait, 10)
    try:
        if failure:
            raise failure[0]
        yield
    finally:
        release.set()
        await asyncio.to_thread(holder.join, 10)
        engine.dispose()


def _writes_held(database_url: str, case_id: str) -> AbstractAsyncContextManager[None]:
    """Hold back every write of the case (PostgreSQL: its row; SQLite: the database's write lock)."""

    def take(connection: Connection) -> None:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT 1 FROM cases WHERE id = :id FOR UPDATE"), {"id": case_id})
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return _held(database_url, take)


def _events_held(database_url: str) -> AbstractAsyncContextManager[None]:
    """PostgreSQL: hold back inserts into the timeline (the last statements of a step boundary's
    transaction), but not the case's row: a write gets past its compare-and-set, then waits."""
    return _held(database_url, lambda connection: connection.execute(text("LOCK TABLE case_events IN EXCLUSIVE MODE")))


async def _running(stack: Stack, case_id: str, step: str, timeout: float = 10.0) -> None:
    """Until the case's ``step`` is running (its command is at the tenant, slowed down by the test)."""
    deadline = time.monotonic() + timeout
    while _step(await stack.get(case_id), step) != "running":
        if time.monotonic() > deadline:
            raise AssertionError(f"{step} did not start in time")
        await asyncio.sleep(0.02)


def _step(case: dict[str, Any], name: str) -> str:
    return str(next(s["status"] for s in case["steps"] if s["name"] == name))


async def test_the_investigation_reads_while_the_write_that_starts_it_waits(
    database_url: str, sandbox: SandboxServer
) -> None:
    # The revoke is slow, so the case is held while it runs; it finishes with the write held back.
    sandbox.tenant.configure({"latency_ms": {"Revoke-MgUserSignInSession": 600}})
    async with running_stack(database_url, sandbox) as stack:
        case_id = (await stack.open("laura@contoso.com"))["id"]
        await _running(stack, case_id, "revoke_sessions")
        async with _writes_held(database_url, case_id):
            # The revoke's result cannot be written, yet the investigation's first reads reach the tenant.
            await until(lambda: stack.calls("Get-MgUser") and stack.calls("Get-InboxRule"), "the first reads", 10)
            held = await stack.get(case_id)
            assert (_step(held, "revoke_sessions"), _step(held, "investigate")) == ("running", "pending")
        case = await stack.wait_for(case_id)
        assert (case["state"], case["outcome"]) == ("resolved", "unblocked")
        _assert_each_read_once(stack)
        # The investigation's answer is the step's: the case's findings came from it.
        assert _step(case, "investigate") == "succeeded"


async def test_the_unblock_waits_for_its_write(database_url: str, sandbox: SandboxServer) -> None:
    """The check is a read, the unblock is not: with the check's result held back, nothing is removed."""
    sandbox.tenant.configure({"latency_ms": {"Get-BlockedSenderAddress": 600}})
    async with running_stack(database_url, sandbox) as stack:
        case_id = (await stack.open("laura@contoso.com"))["id"]
        await _running(stack, case_id, "check_restriction")
        async with _writes_held(database_url, case_id):
            await asyncio.sleep(1.2)  # the check has answered; its result waits for the database
            assert stack.calls("Remove-BlockedSenderAddress") == []
        case = await stack.wait_for(case_id)
        assert (case["state"], case["outcome"]) == ("resolved", "unblocked")
        assert len(stack.calls("Remove-BlockedSenderAddress")) == 1


async def test_a_read_sent_for_a_write_that_lost_is_dropped(database_url: str, sandbox: SandboxServer) -> None:
    """Cancelled while the revoke ran: the investigation the worker sent ahead is not recorded and
    nothing after it runs (the cancel's write won; the revoke's result is kept as a late one)."""
    sandbox.tenant.configure({"latency_ms": {"Revoke-MgUserSignInSession": 600}})
    async with running_stack(database_url, sandbox) as stack:
        case_id = (await stack.open("laura@contoso.com"))["id"]
        await _running(stack, case_id, "revoke_sessions")
        response = await stack.client.post(f"/v1/cases/{case_id}/cancel")
        assert response.status_code == 200, response.text
        case = await stack.wait_for(case_id, "cancelled")
        await asyncio.sleep(1.0)  # anything the worker still does with the case happens now
        case = await stack.get(case_id)
        assert _step(case, "revoke_sessions") == "succeeded"
        assert _step(case, "investigate") == "skipped"  # what the cancel found not yet run
        assert not case["findings"]  # none: no investigation was recorded
        # The revoke's result was first decided on the case as it started: that decision sent the
        # investigation's reads; the write lost to the cancel, so their answers went nowhere.
        assert len(stack.calls("Get-MgUser")) == 1
        # No check of laura's address (the tenant reader's reads of the whole list name none).
        assert [c for c in stack.calls("Get-BlockedSenderAddress") if c["parameters"].get("SenderAddress")] == []
        assert stack.calls("Remove-BlockedSenderAddress") == []


async def test_the_sign_out_waits_for_the_case_s_row(database_url: str, sandbox: SandboxServer) -> None:
    """The reset's result and the revoke's start are one transaction: while another holds the case,
    that write cannot win it, and no revoke is sent."""
    sandbox.tenant.configure({"latency_ms": {"Update-MgUser": 600}})
    async with running_stack(database_url, sandbox) as stack:
        case_id = (await stack.open("laura@contoso.com"))["id"]
        await _running(stack, case_id, "reset_password")
        async with _writes_held(database_url, case_id):
            await asyncio.sleep(1.0)  # the reset has answered; its result waits for the row
            assert stack.calls("Revoke-MgUserSignInSession") == []
        case = await stack.wait_for(case_id)
        assert (case["state"], case["outcome"]) == ("resolved", "unblocked")
        assert len(stack.calls("Revoke-MgUserSignInSession")) == 1


async def test_the_sign_out_goes_out_before_its_write_commits(database_url: str, sandbox: SandboxServer) -> None:
    """Once the write holds the case's row (its compare-and-set won) the revoke goes out, while the
    rest of the transaction is still being written."""
    if not database_url.startswith("postgresql"):
        pytest.skip("needs PostgreSQL (UNBLOCK_TEST_DATABASE_URL): SQLite locks the whole database, not a table")
    sandbox.tenant.configure({"latency_ms": {"Update-MgUser": 600}})
    async with running_stack(database_url, sandbox) as stack:
        case_id = (await stack.open("rob@contoso.com"))["id"]
        await _running(stack, case_id, "reset_password")
        async with _events_held(database_url):
            # The write holds rob's row and waits to insert its timeline: the revoke is out already.
            await until(lambda: stack.calls("Revoke-MgUserSignInSession"), "the revoke", 10)
            held = await stack.get(case_id)  # the case as committed: the reset still running
            assert (_step(held, "reset_password"), _step(held, "revoke_sessions")) == ("running", "pending")
        case = await stack.wait_for(case_id)
        assert (case["state"], case["outcome"]) == ("resolved", "unblocked")
        assert len(stack.calls("Revoke-MgUserSignInSession")) == 1
        assert _step(case, "revoke_sessions") == "succeeded"


async def test_a_cancel_during_the_reset_stops_the_sign_out(database_url: str, sandbox: SandboxServer) -> None:
    """Cancelled while the reset ran: the cancel's write wins the case's row, so the reset's result is
    kept as a late one and the revoke it would have started is never sent."""
    sandbox.tenant.configure({"latency_ms": {"Update-MgUser": 600}})
    async with running_stack(database_url, sandbox) as stack:
        case_id = (await stack.open("laura@contoso.com"))["id"]
        await _running(stack, case_id, "reset_password")
        response = await stack.client.post(f"/v1/cases/{case_id}/cancel")
        assert response.status_code == 200, response.text
        await stack.wait_for(case_id, "cancelled")
        await asyncio.sleep(1.0)  # the reset answers now; anything the worker still does happens now
        case = await stack.get(case_id)
        assert _step(case, "reset_password") == "succeeded"
        assert _step(case, "revoke_sessions") == "skipped"
        assert len(stack.calls("Update-MgUser")) == 1
        assert stack.calls("Revoke-MgUserSignInSession") == []


def _assert_each_read_once(stack: Stack) -> None:
    sent = {cmdlet: len(stack.calls(cmdlet)) for cmdlet in _INVESTIGATION}
    assert sent == _INVESTIGATION
    assert len(stack.calls("Remove-BlockedSenderAddress")) == 1


async def test_a_sign_out_whose_write_was_lost_to_a_cancel_is_recorded_late(
    database_url: str, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write that started the sign-out sent it, then failed to commit (the database went away);
    before it was made again the case was cancelled. The sign-out did reach the tenant, and nothing
    will run it again: once it has answered, its result goes on the cancelled case's timeline as a
    step finished late, as a reset finishing after a cancel does."""
    real = writer.change_case
    lost: list[str] = []

    async def commit_lost_once(db: Any, **kwargs: Any) -> Any:
        then = kwargs.get("then")
        if then is None or lost:
            return await real(db, **kwargs)

        def then_lost(case: Any) -> Any:
            then(case)  # decided with the row held: the sign-out goes out here
            raise Unavailable("the database went away before the commit")

        lost.append(kwargs["case_id"])
        try:
            return await real(db, **{**kwargs, "then": then_lost})
        except Unavailable:
            # Before the worker writes again: a person cancels the case.
            response = await stack.client.post(f"/v1/cases/{kwargs['case_id']}/cancel")
            assert response.status_code == 200, response.text
            raise

    monkeypatch.setattr(engine_module, "change_case", commit_lost_once)
    async with running_stack(database_url, sandbox) as stack:
        case_id = (await stack.open("rob@contoso.com"))["id"]
        await stack.wait_for(case_id, "cancelled")
        await until(lambda: stack.calls("Revoke-MgUserSignInSession"), "the sign-out", 10)

        async def late() -> list[dict[str, Any]]:
            events = await stack.events(case_id)
            return [e for e in events if e["type"] == "step.finished_late" and e["step"] == "revoke_sessions"]

        deadline = time.monotonic() + 10
        while not await late():
            if time.monotonic() > deadline:
                raise AssertionError("the sign-out's result was not recorded on the case")
            await asyncio.sleep(0.05)
        assert lost == [case_id]
        assert [e["detail"] for e in await late()] == [{"status": "succeeded"}]
        case = await stack.get(case_id)
        assert (case["state"], _step(case, "revoke_sessions")) == ("cancelled", "succeeded")
        assert len(stack.calls("Revoke-MgUserSignInSession")) == 1
